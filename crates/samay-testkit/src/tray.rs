//! A desktop tray without a desktop: a private session bus (`dbus-run-session`, with an
//! unlocked gnome-keyring on it), and a StatusNotifierWatcher stand-in owned by the test that
//! receives `RegisterStatusNotifierItem`, reads an item's menu through `com.canonical.dbusmenu`
//! (`GetLayout`) and clicks it (`Event(id, "clicked", …)`), as a panel would.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedValue, Value};

use crate::login_cli::in_dbus_session;

/// How long a test waits for the bus, a registration or a menu state.
pub const WAIT: Duration = Duration::from_secs(30);

const WATCHER_NAME: &str = "org.kde.StatusNotifierWatcher";
const WATCHER_PATH: &str = "/StatusNotifierWatcher";
const MENU_INTERFACE: &str = "com.canonical.dbusmenu";
const ITEM_PATH: &str = "/StatusNotifierItem";
const ITEM_INTERFACE: &str = "org.kde.StatusNotifierItem";

/// A private D-Bus session bus with an unlocked gnome-keyring (the Secret Service), for as long
/// as this value lives: `dbus-run-session` runs a shell that prints the address and waits for its
/// stdin to close.
pub struct SessionBus {
    child: Child,
    pub address: String,
}

impl SessionBus {
    /// Starts it with the isolated environment of `home` (the keyring lives there).
    pub fn start(home: &Path) -> SessionBus {
        let script =
            "printf pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1; \
                      echo \"$DBUS_SESSION_BUS_ADDRESS\"; exec cat >/dev/null";
        let mut child = in_dbus_session(home, script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-run-session (scripts/install-peers.sh installs it)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line.trim().to_string());
        });
        let address = rx
            .recv_timeout(WAIT)
            .ok()
            .filter(|a| !a.is_empty())
            .expect("dbus-run-session printed the bus address");
        SessionBus { child, address }
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        // Closing stdin ends `cat`, and dbus-run-session then stops the bus and its services.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The watcher's record of registrations, in order.
struct Watcher {
    items: Arc<Mutex<Vec<String>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    async fn register_status_notifier_item(&self, service: &str) {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(service.to_string());
    }

    async fn register_status_notifier_host(&self, _service: &str) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }
}

/// One item of a menu, as a panel reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: i32,
    /// The label as shown (dbusmenu's `__` is one `_`); empty for a separator.
    pub label: String,
    pub enabled: bool,
    pub separator: bool,
}

/// The panel stand-in: owns `org.kde.StatusNotifierWatcher` on the bus.
pub struct TrayHost {
    conn: zbus::Connection,
    items: Arc<Mutex<Vec<String>>>,
}

impl TrayHost {
    pub async fn start(bus: &SessionBus) -> TrayHost {
        let items = Arc::new(Mutex::new(Vec::new()));
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .expect("bus address")
            .serve_at(
                WATCHER_PATH,
                Watcher {
                    items: Arc::clone(&items),
                },
            )
            .expect("watcher object")
            .name(WATCHER_NAME)
            .expect("watcher name")
            .method_timeout(Duration::from_secs(10))
            .build()
            .await
            .expect("connect the watcher to the session bus");
        TrayHost { conn, items }
    }

    /// How many items registered so far.
    pub fn registrations(&self) -> usize {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The bus name of the item that registers after the first `seen` (bounded wait).
    pub async fn wait_for_item(&self, seen: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(name) = self
                .items
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(seen)
            {
                return name.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no tray item registered with the watcher within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The item's menu, top level, through `GetLayout`.
    pub async fn menu(&self, item: &str) -> Vec<Entry> {
        type Layout = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);
        let reply = self
            .conn
            .call_method(
                Some(item),
                self.menu_path(item).await.as_str(),
                Some(MENU_INTERFACE),
                "GetLayout",
                &(0i32, -1i32, Vec::<String>::new()),
            )
            .await
            .expect("GetLayout");
        let (_revision, root): (u32, Layout) = reply.body().deserialize().expect("a layout");
        root.2
            .into_iter()
            .map(|child| {
                let (id, props, _): Layout = child.try_into().expect("a menu item");
                let text = |k: &str| {
                    props
                        .get(k)
                        .and_then(|v| String::try_from(v.clone()).ok())
                        .unwrap_or_default()
                };
                Entry {
                    id,
                    label: text("label").replace("__", "_"),
                    // dbusmenu: an absent property has its default.
                    enabled: props
                        .get("enabled")
                        .and_then(|v| bool::try_from(v.clone()).ok())
                        .unwrap_or(true),
                    separator: text("type") == "separator",
                }
            })
            .collect()
    }

    /// The labels of [`TrayHost::menu`], disabled ones in parentheses, separators as `---`.
    pub async fn labels(&self, item: &str) -> Vec<String> {
        self.menu(item)
            .await
            .into_iter()
            .map(|e| match e {
                e if e.separator => "---".to_string(),
                e if e.enabled => e.label,
                e => format!("({})", e.label),
            })
            .collect()
    }

    /// Waits (bounded) until the menu's labels satisfy `ok`, and returns them.
    pub async fn wait_for_menu(
        &self,
        item: &str,
        what: &str,
        ok: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let labels = self.labels(item).await;
            if ok(&labels) {
                return labels;
            }
            assert!(
                Instant::now() < deadline,
                "the tray menu did not show {what} within {WAIT:?}; it shows {labels:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Clicks the enabled item labelled `label`, as a panel does.
    pub async fn click(&self, item: &str, label: &str) {
        let menu = self.menu(item).await;
        let entry = menu
            .iter()
            .find(|e| e.label == label)
            .unwrap_or_else(|| panic!("no {label:?} in the menu: {menu:#?}"));
        assert!(entry.enabled, "{label:?} is disabled: {menu:#?}");
        let timestamp = 0u32;
        self.conn
            .call_method(
                Some(item),
                self.menu_path(item).await.as_str(),
                Some(MENU_INTERFACE),
                "Event",
                &(entry.id, "clicked", Value::from(0i32), timestamp),
            )
            .await
            .expect("Event clicked");
    }

    /// A property of the item (`IconName`, `Status`, ...), as text.
    pub async fn item_property(&self, item: &str, name: &str) -> String {
        let value = self.property(item, ITEM_PATH, ITEM_INTERFACE, name).await;
        String::try_from(value).unwrap_or_default()
    }

    /// The item's `Menu` property: where its dbusmenu is served.
    async fn menu_path(&self, item: &str) -> String {
        let value = self.property(item, ITEM_PATH, ITEM_INTERFACE, "Menu").await;
        zbus::zvariant::OwnedObjectPath::try_from(value)
            .expect("Menu is an object path")
            .to_string()
    }

    async fn property(&self, item: &str, path: &str, interface: &str, name: &str) -> OwnedValue {
        let reply = self
            .conn
            .call_method(
                Some(item),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(interface, name),
            )
            .await
            .unwrap_or_else(|e| panic!("Get {interface}.{name}: {e}"));
        reply.body().deserialize().expect("a variant")
    }
}
