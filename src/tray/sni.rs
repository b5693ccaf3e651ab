//! Linux: the [`super::model`] menu as a StatusNotifierItem with a `com.canonical.dbusmenu`
//! menu (the `ksni` crate, over the zbus the keyring already uses). Thin on purpose: labels,
//! items and icons come from the model; a click only hands its [`Action`] to the daemon.

use std::sync::Arc;

use chrono::Utc;
use ksni::menu::{MenuItem, StandardItem};
use ksni::TrayMethods as _;

use super::model::{self, IconState, Item, Snapshot};
use super::{Feed, TrayError};

/// The item ksni serves: the latest snapshot, and where clicks go.
struct SniTray {
    snapshot: Snapshot,
    feed: Arc<Feed>,
    /// `ui.tray = "on"`: a missing tray host is worth a warning.
    announce: bool,
}

impl ksni::Tray for SniTray {
    fn id(&self) -> String {
        "aw-sync-samay".into()
    }

    /// The tray host went away, or (in a graphical session) is not there yet: the icon stays
    /// ready and shows again when a host appears.
    fn watcher_offline(&self, reason: ksni::OfflineReason) -> bool {
        let why = match reason {
            ksni::OfflineReason::Error(e) => e.to_string(),
            _ => "the tray host stopped".to_string(),
        };
        if self.announce {
            tracing::warn!("no tray icon for now ({why}); it shows when the desktop's tray host starts, and syncing goes on meanwhile");
        } else {
            tracing::debug!("no tray host for now: {why}");
        }
        true
    }

    fn watcher_online(&self) {
        tracing::info!("a tray host appeared: tray icon shown");
    }

    fn title(&self) -> String {
        model::TITLE.into()
    }

    fn category(&self) -> ksni::Category {
        ksni::Category::ApplicationStatus
    }

    fn status(&self) -> ksni::Status {
        match model::icon(&self.snapshot) {
            IconState::NeedsAttention => ksni::Status::NeedsAttention,
            _ => ksni::Status::Active,
        }
    }

    fn icon_name(&self) -> String {
        model::icon(&self.snapshot).icon_name().into()
    }

    fn attention_icon_name(&self) -> String {
        IconState::NeedsAttention.icon_name().into()
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        ksni::ToolTip {
            title: model::header(&self.snapshot),
            description: model::status_line(&self.snapshot, Utc::now()),
            ..Default::default()
        }
    }

    /// Built when a host asks for the layout, so "synced 3 min ago" is as of the opening.
    fn menu(&self) -> Vec<MenuItem<Self>> {
        model::menu(&self.snapshot, Utc::now())
            .into_iter()
            .map(|item| match item {
                Item::Label(label) => StandardItem {
                    label: escape(&label),
                    enabled: false,
                    ..Default::default()
                }
                .into(),
                Item::Button {
                    label,
                    action,
                    enabled,
                } => StandardItem {
                    label: escape(&label),
                    enabled,
                    activate: Box::new(move |t: &mut SniTray| t.feed.ask(action)),
                    ..Default::default()
                }
                .into(),
                Item::Separator => MenuItem::Separator,
            })
            .collect()
    }
}

/// dbusmenu reads `_` as an access-key mark: a user name like `alice_b` must show as written.
fn escape(label: &str) -> String {
    label.replace('_', "__")
}

pub(super) struct Shown {
    handle: ksni::Handle<SniTray>,
    updater: tokio::task::JoinHandle<()>,
}

impl Shown {
    pub(super) fn is_alive(&self) -> bool {
        !self.handle.is_closed()
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        self.updater.abort();
        // The request is sent now; waiting for it is not needed (the service unregisters on
        // its own thread).
        drop(self.handle.shutdown());
    }
}

/// `wait_for_host`: a missing watcher is one not started yet (see [`super::show`]);
/// `announce`: say so as a warning (`ui.tray = "on"`).
pub(super) async fn show(
    feed: &Arc<Feed>,
    wait_for_host: bool,
    announce: bool,
) -> Result<Shown, TrayError> {
    let mut changes = feed.subscribe();
    let tray = SniTray {
        snapshot: changes.borrow_and_update().clone(),
        feed: Arc::clone(feed),
        announce,
    };
    let handle = tray
        .assume_sni_available(wait_for_host)
        .spawn()
        .await
        .map_err(|e| match e {
            ksni::Error::Dbus(e) => TrayError::NoSessionBus(e.to_string()),
            other => TrayError::NoTrayHost(other.to_string()),
        })?;
    let updater = {
        let handle = handle.clone();
        tokio::spawn(async move {
            // Ends when the feed goes (the daemon stops) or the service did.
            while changes.changed().await.is_ok() {
                let snapshot = changes.borrow_and_update().clone();
                if handle.update(|t| t.snapshot = snapshot).await.is_none() {
                    return;
                }
            }
        })
    };
    Ok(Shown { handle, updater })
}
