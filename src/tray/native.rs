//! macOS and Windows: the [`super::model`] menu through the `tray-icon` crate (Tauri's; the
//! menu is its `muda`). The counterpart of `sni.rs`, as thin: labels, items and the icon come
//! from the model; a click only hands its [`Action`] to the daemon through the same [`Feed`].
//!
//! **Type-checked, never run, here**: `scripts/check-cross.sh` runs `cargo clippy` of the root
//! package for `x86_64-pc-windows-gnu` and `x86_64-apple-darwin` (every line below, both
//! platforms' `cfg`s); this project has no macOS or Windows machine to run the icon on.
//!
//! # Threads
//! tray-icon's objects belong to the thread that made them, and that thread must run the
//! platform's event loop (tray-icon's docs, "Platform-specific notes"):
//! * **Windows**: any thread, if it runs a Win32 message loop. The daemon's main thread runs
//!   tokio's `block_on`, so the icon gets a thread of its own ([`windows::show`]) that makes
//!   the icon and then sits in `GetMessageW`: no timer, no polling. A change of the snapshot
//!   is posted to that thread as a thread message (`WM_APP`), and the thread redraws from
//!   [`Feed::get`]; dropping [`Shown`] posts `WM_QUIT`, which ends the loop and with it the
//!   icon.
//! * **macOS**: only the main thread, with AppKit's event loop already running. So a daemon's
//!   main thread is the icon's ([`macos::run_main`], called by `main.rs` through
//!   [`super::run_main`]): the runtime and the command run on a thread of their own, and the
//!   main thread waits — touching nothing of AppKit — until the first icon is asked for; then
//!   it runs `NSApplication` (as a menu-bar extra: no Dock icon) until the command ends. Work
//!   reaches it through the main dispatch queue: make the icon, redraw it, remove it, stop.
//!
//! Menus are rebuilt on each change of the snapshot (the daemon changes it a few times per
//! cycle, not per second); unlike the Linux menu, which is built when opened, a status line
//! like "Synced 3 min ago" is as of the last change — a timer to refresh it would wake an
//! idle daemon (issue 5).

use std::sync::Arc;

use chrono::Utc;
use tray_icon::menu::{Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

use super::model::{self, Action, IconState, Item, Snapshot};
use super::{Feed, TrayError};

/// Pixels per side of the icon: tray-icon scales it to the tray (16–32 px at 1×–2×).
const ICON_SIZE: u32 = 32;

/// The icon and what it shows, on the thread that made it (tray-icon's objects are not
/// `Send`).
struct Ui {
    icon: TrayIcon,
    /// The state the icon's pixels show: they are replaced only when it changes.
    state: IconState,
}

impl Ui {
    /// Makes the icon for `s` and sends its clicks to `feed`. Call on the event loop's thread.
    fn new(feed: &Arc<Feed>, s: &Snapshot) -> Result<Ui, TrayError> {
        let state = model::icon(s);
        let icon = TrayIconBuilder::new()
            .with_id("aw-sync-samay")
            .with_menu(Box::new(menu(s)?))
            .with_tooltip(tooltip(s))
            .with_icon(pixels(state)?)
            .build()
            .map_err(|e| TrayError::Failed(e.to_string()))?;
        // Once the icon exists, so a failed one leaves no handler holding the feed.
        route_clicks(Arc::clone(feed));
        Ok(Ui { icon, state })
    }

    /// Shows `s`. A failure leaves the previous picture up (logged): the daemon syncs on.
    fn redraw(&mut self, s: &Snapshot) {
        match menu(s) {
            Ok(m) => self.icon.set_menu(Some(Box::new(m))),
            Err(e) => tracing::warn!("tray menu not updated: {e}"),
        }
        if let Err(e) = self.icon.set_tooltip(Some(tooltip(s))) {
            tracing::debug!("tray tooltip not updated: {e}");
        }
        let state = model::icon(s);
        if state != self.state {
            match pixels(state).and_then(|p| {
                self.icon
                    .set_icon(Some(p))
                    .map_err(|e| TrayError::Failed(e.to_string()))
            }) {
                Ok(()) => self.state = state,
                Err(e) => tracing::warn!("tray icon not updated: {e}"),
            }
        }
    }
}

/// muda's menus are per process: one handler gets every click, as the id the item was made
/// with ([`Action::id`]). It runs on the event loop's thread and only queues the action. It is
/// not cleared when an icon goes: the feed it holds lives as long as the daemon anyway, and an
/// old icon's late removal (Windows: its thread ends after a new icon's started) must not
/// silence the new icon's clicks.
fn route_clicks(feed: Arc<Feed>) {
    MenuEvent::set_event_handler(Some(move |event: MenuEvent| {
        if let Some(action) = Action::from_id(event.id.as_ref()) {
            feed.ask(action);
        }
    }));
}

/// The model's menu as muda items: labels greyed out, buttons named by their action's id.
fn menu(s: &Snapshot) -> Result<Menu, TrayError> {
    let built = Menu::new();
    let failed = |e: tray_icon::menu::Error| TrayError::Failed(e.to_string());
    for item in model::menu(s, Utc::now()) {
        match item {
            Item::Label(label) => built.append(&MenuItem::new(escape(&label), false, None)),
            Item::Button {
                label,
                action,
                enabled,
            } => built.append(&MenuItem::with_id(
                action.id(),
                escape(&label),
                enabled,
                None,
            )),
            Item::Separator => built.append(&PredefinedMenuItem::separator()),
        }
        .map_err(failed)?;
    }
    Ok(built)
}

/// muda reads `&` as an access-key mark: a user name like `a&b` must show as written.
fn escape(label: &str) -> String {
    label.replace('&', "&&")
}

fn tooltip(s: &Snapshot) -> String {
    format!(
        "{}\n{}",
        model::header(s),
        model::status_line(s, Utc::now())
    )
}

/// The state's picture ([`IconState::rgba`]): neither platform has the freedesktop icon
/// names Linux uses.
fn pixels(state: IconState) -> Result<Icon, TrayError> {
    Icon::from_rgba(state.rgba(ICON_SIZE), ICON_SIZE, ICON_SIZE)
        .map_err(|e| TrayError::Failed(format!("bad icon: {e}")))
}

#[cfg(target_os = "macos")]
pub(super) use macos::{run_main, show, Shown};
#[cfg(target_os = "windows")]
pub(super) use windows::{show, Shown};

/// The icon's own thread and its Win32 message loop (see the module's "Threads").
#[cfg(target_os = "windows")]
mod windows {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use windows_sys::Win32::System::Threading::GetCurrentThreadId;
    use windows_sys::Win32::UI::WindowsAndMessaging::{
        DispatchMessageW, GetMessageW, PeekMessageW, PostThreadMessageW, TranslateMessage, MSG,
        PM_NOREMOVE, WM_APP, WM_QUIT, WM_USER,
    };

    use super::{Feed, TrayError, Ui};

    /// "The snapshot changed": posted to the icon's thread, which redraws from the feed.
    const WM_REDRAW: u32 = WM_APP;

    pub(in super::super) struct Shown {
        thread_id: u32,
        /// False once the message loop ended (the icon is gone).
        running: Arc<AtomicBool>,
        updater: tokio::task::JoinHandle<()>,
    }

    impl Shown {
        pub(in super::super) fn is_alive(&self) -> bool {
            self.running.load(Ordering::Relaxed)
        }
    }

    impl Drop for Shown {
        fn drop(&mut self) {
            self.updater.abort();
            // SAFETY: posting to a thread id is safe whatever the thread's state; a thread that
            // already ended makes it fail, which is fine (the icon is gone then too).
            unsafe { PostThreadMessageW(self.thread_id, WM_QUIT, 0, 0) };
        }
    }

    pub(in super::super) async fn show(feed: &Arc<Feed>) -> Result<Shown, TrayError> {
        // Before the icon reads the snapshot: a change while it is made is redrawn after.
        let mut changes = feed.subscribe();
        changes.borrow_and_update();
        let (ready, started) = tokio::sync::oneshot::channel();
        let running = Arc::new(AtomicBool::new(true));
        let (f, r) = (Arc::clone(feed), Arc::clone(&running));
        std::thread::Builder::new()
            .name("tray-icon".into())
            .spawn(move || {
                run(&f, ready);
                r.store(false, Ordering::Relaxed);
            })
            .map_err(|e| TrayError::Failed(format!("cannot start the icon's thread: {e}")))?;
        let thread_id = started
            .await
            .map_err(|_| TrayError::Failed("the icon's thread ended at once".into()))??;
        let updater = tokio::spawn(async move {
            // Ends when the feed goes (the daemon stops) or the thread did (posting fails).
            while changes.changed().await.is_ok() {
                changes.borrow_and_update();
                // SAFETY: see Drop.
                if unsafe { PostThreadMessageW(thread_id, WM_REDRAW, 0, 0) } == 0 {
                    return;
                }
            }
        });
        Ok(Shown {
            thread_id,
            running,
            updater,
        })
    }

    /// The icon's thread: make the icon, say so (with the thread's id, for posting), then run
    /// the message loop until `WM_QUIT`.
    fn run(feed: &Arc<Feed>, ready: tokio::sync::oneshot::Sender<Result<u32, TrayError>>) {
        // SAFETY: MSG is plain data; all-zero is a valid value for it.
        let mut msg: MSG = unsafe { std::mem::zeroed() };
        // A thread has a message queue only once it calls into USER32: make it now, so a
        // redraw posted right after `ready` is not lost.
        // SAFETY: `msg` is a valid MSG to write to; a null window means the thread's messages.
        unsafe {
            PeekMessageW(
                &mut msg,
                std::ptr::null_mut(),
                WM_USER,
                WM_USER,
                PM_NOREMOVE,
            )
        };
        let mut ui = match Ui::new(feed, &feed.get()) {
            Ok(ui) => ui,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        // SAFETY: no preconditions.
        let _ = ready.send(Ok(unsafe { GetCurrentThreadId() }));
        loop {
            // SAFETY: as for PeekMessageW. 0 is WM_QUIT, -1 an error: both end the loop.
            let got = unsafe { GetMessageW(&mut msg, std::ptr::null_mut(), 0, 0) };
            if got == 0 || got == -1 {
                break;
            }
            if msg.hwnd.is_null() && msg.message == WM_REDRAW {
                ui.redraw(&feed.get());
                continue;
            }
            // SAFETY: `msg` was filled by GetMessageW. The icon's hidden window and its menu
            // get their messages here.
            unsafe {
                TranslateMessage(&msg);
                DispatchMessageW(&msg);
            }
        }
        drop(ui);
    }
}

/// The main thread as the icon's: AppKit's event loop, started when the first icon is asked
/// for (see the module's "Threads").
#[cfg(target_os = "macos")]
mod macos {
    use std::cell::RefCell;
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};

    use dispatch2::DispatchQueue;
    use objc2::MainThreadMarker;
    use objc2_app_kit::{
        NSApplication, NSApplicationActivationPolicy, NSEvent, NSEventModifierFlags, NSEventType,
    };
    use objc2_foundation::NSPoint;

    use super::{Feed, TrayError, Ui};

    /// The stack the command had on the main thread (macOS gives it 8 MiB; a spawned thread
    /// gets 2 MiB by default): moving it to a thread of its own changes nothing for it.
    const MAIN_STACK: usize = 8 << 20;

    /// The main thread, as the command's threads see it.
    enum Host {
        /// Waiting, AppKit untouched: dropping the sender lets it return, sending wakes it to
        /// run `NSApplication`.
        Waiting(mpsc::Sender<()>),
        /// `NSApplication` runs (or is about to): work goes through the main dispatch queue.
        Running,
        /// The command ended: the main thread stops (or stopped) and takes no more work.
        Done,
    }

    /// Set by [`run_main`]; absent (no icon: [`TrayError::NeedsMainThread`]) in a process whose
    /// main thread is not the icon's.
    static HOST: OnceLock<Mutex<Host>> = OnceLock::new();

    thread_local! {
        /// The icon, on the main thread (tray-icon's objects are not `Send`), with the number
        /// of the [`Shown`] it belongs to.
        static UI: RefCell<Option<(u64, Ui)>> = const { RefCell::new(None) };
    }

    /// Numbers the icons: a [`Shown`] dropped after its successor was made (a reload) removes
    /// only its own.
    static ICONS: AtomicU64 = AtomicU64::new(0);

    fn host() -> Option<MutexGuard<'static, Host>> {
        HOST.get()
            .map(|h| h.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs `work` (the runtime and the command) on a thread of its own and keeps this, the
    /// main thread, for the icon; returns `work`'s exit code. A panic in `work` goes on here,
    /// as if it had run on this thread.
    pub(in super::super) fn run_main<F>(work: F) -> ExitCode
    where
        F: FnOnce() -> ExitCode + Send + 'static,
    {
        let Some(mtm) = MainThreadMarker::new() else {
            return work();
        };
        let (wake, woken) = mpsc::channel();
        if HOST.set(Mutex::new(Host::Waiting(wake))).is_err() {
            return work();
        }
        // Named as the thread it replaces: a panic still reads "thread 'main' panicked".
        let worker = std::thread::Builder::new()
            .name("main".into())
            .stack_size(MAIN_STACK)
            .spawn(move || {
                // On return or panic: let the main thread return too.
                let _done = Finish;
                work()
            });
        let worker = match worker {
            Ok(w) => w,
            Err(e) => {
                eprintln!("aw-sync-samay: cannot start the sync's thread: {e}");
                return ExitCode::from(1);
            }
        };
        if woken.recv().is_ok() {
            let app = NSApplication::sharedApplication(mtm);
            // A menu-bar extra: no Dock icon, no menu bar of its own.
            app.setActivationPolicy(NSApplicationActivationPolicy::Accessory);
            // Until `Finish` stops it; the icon is made by the first job it runs, so with the
            // loop already running (tray-icon's docs).
            app.run();
        }
        match worker.join() {
            Ok(code) => code,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Dropped when the command's thread ends: the main thread leaves its wait or its event
    /// loop (the icon goes with the process).
    struct Finish;

    impl Drop for Finish {
        fn drop(&mut self) {
            let Some(mut host) = host() else { return };
            if let Host::Running = std::mem::replace(&mut *host, Host::Done) {
                DispatchQueue::main().exec_async(|| {
                    if let Some(mtm) = MainThreadMarker::new() {
                        UI.with(|ui| ui.borrow_mut().take());
                        stop(mtm);
                    }
                });
            }
            // `Waiting`: dropping its sender ends the main thread's wait.
        }
    }

    /// `-[NSApplication stop:]` takes effect only after the next event, and a dispatched job is
    /// not one: post an empty event so `run` returns now (winit does the same).
    fn stop(mtm: MainThreadMarker) {
        let app = NSApplication::sharedApplication(mtm);
        app.stop(None);
        let event = NSEvent::otherEventWithType_location_modifierFlags_timestamp_windowNumber_context_subtype_data1_data2(
            NSEventType::ApplicationDefined,
            NSPoint::new(0.0, 0.0),
            NSEventModifierFlags(0),
            0.0,
            0,
            None,
            0,
            0,
            0,
        );
        if let Some(event) = event {
            app.postEvent_atStart(&event, true);
        }
    }

    /// Runs `job` on the main thread, starting AppKit's loop there first if this is the first.
    fn on_main(job: impl FnOnce() + Send + 'static) -> Result<(), TrayError> {
        let mut host = host().ok_or(TrayError::NeedsMainThread)?;
        match &*host {
            Host::Waiting(wake) => {
                wake.send(())
                    .map_err(|_| TrayError::Failed("the main thread is gone".into()))?;
                *host = Host::Running;
            }
            Host::Running => {}
            Host::Done => return Err(TrayError::Failed("the daemon is stopping".into())),
        }
        DispatchQueue::main().exec_async(move || {
            // The main queue's jobs run on the main thread; the check costs nothing.
            if MainThreadMarker::new().is_some() {
                job();
            }
        });
        Ok(())
    }

    /// The icon, while shown: on the main thread, redrawn on each change of the feed.
    pub(in super::super) struct Shown {
        number: u64,
        updater: tokio::task::JoinHandle<()>,
    }

    impl Shown {
        pub(in super::super) fn is_alive(&self) -> bool {
            host().is_some_and(|h| matches!(*h, Host::Running)) && !self.updater.is_finished()
        }
    }

    impl Drop for Shown {
        fn drop(&mut self) {
            self.updater.abort();
            let number = self.number;
            let _ = on_main(move || {
                UI.with(|ui| {
                    let mut ui = ui.borrow_mut();
                    if ui.as_ref().is_some_and(|(n, _)| *n == number) {
                        *ui = None;
                    }
                })
            });
        }
    }

    pub(in super::super) async fn show(feed: &Arc<Feed>) -> Result<Shown, TrayError> {
        // Before the icon reads the snapshot: a change while it is made is redrawn after.
        let mut changes = feed.subscribe();
        changes.borrow_and_update();
        let (ready, made) = tokio::sync::oneshot::channel();
        let number = ICONS.fetch_add(1, Ordering::Relaxed);
        let f = Arc::clone(feed);
        on_main(move || {
            let made = UI.with(|slot| {
                let mut slot = slot.borrow_mut();
                // One icon at a time: a predecessor still up goes first.
                *slot = None;
                Ui::new(&f, &f.get()).map(|ui| *slot = Some((number, ui)))
            });
            let _ = ready.send(made);
        })?;
        made.await.map_err(|_| {
            TrayError::Failed("the main thread ended before the icon was made".into())
        })??;
        let feed = Arc::clone(feed);
        let updater = tokio::spawn(async move {
            // Ends when the feed goes (the daemon stops) or the main thread takes no more work.
            while changes.changed().await.is_ok() {
                changes.borrow_and_update();
                let f = Arc::clone(&feed);
                let redraw = move || {
                    UI.with(|ui| {
                        if let Some((n, ui)) = ui.borrow_mut().as_mut() {
                            if *n == number {
                                ui.redraw(&f.get());
                            }
                        }
                    })
                };
                if on_main(redraw).is_err() {
                    return;
                }
            }
        });
        Ok(Shown { number, updater })
    }
}
