//! macOS and Windows: the [`super::model`] menu through the `tray-icon` crate (Tauri's; the
//! menu is its `muda`). The counterpart of `sni.rs`, as thin: labels, items and the icon come
//! from the model; a click only hands its [`Action`] to the daemon through the same [`Feed`].
//!
//! **Not built or run in this project's CI** (Linux only: no macOS or Windows target, no way to
//! fetch one). `scripts/check-tray-icon.sh` type-checks the platform-independent part below
//! ([`Ui`], the menu, the icon, the click routing) against tray-icon's Linux (gtk) backend; the
//! Windows thread and its message loop ([`windows`]) are checked by nobody here.
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
//! * **macOS**: only the main thread, with AppKit's event loop already running. That thread is
//!   tokio's here (`main.rs`), so showing the icon needs `main.rs` to run the runtime on a
//!   thread of its own and give the main thread to `NSApplication::run`, the snapshot's
//!   changes reaching it through the main dispatch queue. That hand-over is not written (it
//!   changes every command's start, and could not be compiled or tried here), so on macOS
//!   [`super::show`] says why there is no icon ([`super::TrayError::NeedsMainThread`]) and
//!   the daemon syncs on without one, as on a Linux server.
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

impl Drop for Ui {
    /// The click handler holds the feed: let it go with the icon.
    fn drop(&mut self) {
        MenuEvent::set_event_handler(None::<fn(MenuEvent)>);
    }
}

/// muda's menus are per process: one handler gets every click, as the id the item was made
/// with ([`Action::id`]). It runs on the event loop's thread and only queues the action.
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
        let mut changes = feed.subscribe();
        changes.borrow_and_update();
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
