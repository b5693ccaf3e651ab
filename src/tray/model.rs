//! The tray menu as data: which items there are, their labels in each state, what a click asks
//! for, and which icon shows the state. No platform code: the Linux adapter (`sni.rs`) only
//! turns [`Menu`] into D-Bus menu items and a click back into an [`Action`], so everything a
//! user sees is decided (and unit-tested) here, for every platform alike.

use chrono::{DateTime, Utc};

/// Who the daemon syncs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Tokens of a login are stored: the user's name as `--login` prints it.
    LoggedIn(String),
    /// `[auth]` is configured and no tokens are stored.
    LoggedOut,
    /// A fixed token (`AW_SYNC_SAMAY_TOKEN`, `--dev`): nothing to log in to or out of here.
    Token(String),
    /// No `[auth]` and no token: logging in needs the config first.
    NotConfigured,
}

/// Why the last cycle failed, as far as the status line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer from the upstream, or it is overloaded (5xx, 429): it passes by itself.
    UpstreamUnreachable,
    AwServerUnreachable,
    /// Anything else (the details are in the log).
    Other,
}

/// What the daemon is doing, as the status line says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activity {
    /// Before the first cycle ended.
    Starting,
    /// A cycle runs: `delivered` of the `found` new events so far.
    Syncing {
        delivered: u64,
        found: u64,
    },
    /// The last cycle succeeded at `at`, leaving `quarantined` events refused for good.
    Synced {
        at: DateTime<Utc>,
        quarantined: u64,
    },
    LoginRequired,
    /// The last cycle failed; the next one starts at `retry_at`.
    Failed {
        failure: Failure,
        retry_at: DateTime<Utc>,
    },
    /// Nothing to sync to (`why`: "sync.base_url is empty", ...).
    NotConfigured(String),
}

/// Everything the menu and the icon are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub login: Login,
    pub activity: Activity,
    /// Scheduled cycles are paused (kept in the state database).
    pub paused: bool,
    /// A browser login started from the menu has not ended yet.
    pub logging_in: bool,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            login: Login::NotConfigured,
            activity: Activity::Starting,
            paused: false,
            logging_in: false,
        }
    }
}

/// What a click asks the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The browser login of `--login` (loopback, PKCE), run by the daemon.
    LogIn,
    /// `--logout`: revoke at the provider, delete the stored tokens.
    LogOut,
    /// Start a cycle now (the control channel's "sync now").
    SyncNow,
    Pause,
    Resume,
    OpenLogFolder,
    OpenConfigFile,
}

/// One line of the menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Text that does nothing when clicked (the header, the status line).
    Label(String),
    Button {
        label: String,
        action: Action,
        enabled: bool,
    },
    Separator,
}

/// The whole menu, top to bottom.
pub type Menu = Vec<Item>;

/// The icon's state: the design's "loading indicator".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IconState {
    Synced,
    Syncing,
    Paused,
    /// The user must look: a login, a failure, nothing configured.
    NeedsAttention,
}

impl IconState {
    /// A name of the freedesktop icon naming specification, present in every icon theme.
    pub fn icon_name(self) -> &'static str {
        match self {
            IconState::Synced => "network-idle",
            IconState::Syncing => "network-transmit-receive",
            IconState::Paused => "media-playback-pause",
            IconState::NeedsAttention => "dialog-warning",
        }
    }
}

impl IconState {
    /// The icon as `size`×`size` RGBA pixels, for the platforms whose tray takes pixels and has
    /// no freedesktop icon theme (macOS, Windows: `tray_icon.rs`): a disc in the state's
    /// colour, with a mark inside so the state reads without telling colours apart — hollow
    /// while syncing, two bars when paused, an exclamation mark when the user must look.
    pub fn rgba(self, size: u32) -> Vec<u8> {
        let color: [u8; 3] = match self {
            IconState::Synced => [0x2e, 0xa0, 0x43],
            IconState::Syncing => [0x1f, 0x6f, 0xeb],
            IconState::Paused => [0x8c, 0x95, 0x9f],
            IconState::NeedsAttention => [0xd2, 0x7b, 0x12],
        };
        let n = f64::from(size.max(1));
        let mut pixels = Vec::with_capacity((size as usize).pow(2) * 4);
        for y in 0..size {
            for x in 0..size {
                // Pixel centre, in units of the icon: -1..1 both ways.
                let u = (f64::from(x) + 0.5) / n * 2.0 - 1.0;
                let v = (f64::from(y) + 0.5) / n * 2.0 - 1.0;
                let r = (u * u + v * v).sqrt();
                let mark = match self {
                    IconState::Synced => false,
                    IconState::Syncing => r < 0.5,
                    IconState::Paused => (0.15..0.4).contains(&u.abs()) && v.abs() < 0.45,
                    IconState::NeedsAttention => {
                        u.abs() < 0.13 && ((-0.55..0.15).contains(&v) || (0.3..0.55).contains(&v))
                    }
                };
                let px = if r > 0.95 {
                    [0, 0, 0, 0]
                } else if mark {
                    [0xff, 0xff, 0xff, 0xff]
                } else {
                    [color[0], color[1], color[2], 0xff]
                };
                pixels.extend_from_slice(&px);
            }
        }
        pixels
    }
}

impl Action {
    /// Every action, for [`Action::from_id`].
    pub const ALL: [Action; 7] = [
        Action::LogIn,
        Action::LogOut,
        Action::SyncNow,
        Action::Pause,
        Action::Resume,
        Action::OpenLogFolder,
        Action::OpenConfigFile,
    ];

    /// A stable id for a menu toolkit that names items by string (tray-icon's `MenuId`): a
    /// click comes back as the id alone, and [`Action::from_id`] turns it into the action.
    pub fn id(self) -> &'static str {
        match self {
            Action::LogIn => "log-in",
            Action::LogOut => "log-out",
            Action::SyncNow => "sync-now",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::OpenLogFolder => "open-log-folder",
            Action::OpenConfigFile => "open-config-file",
        }
    }

    /// The action of a clicked item's id; `None` for an id this menu never gave out.
    pub fn from_id(id: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.id() == id)
    }
}

/// The application's name, first in the header.
pub const TITLE: &str = "Samay Sync";

/// "Samay Sync — Logged in as alice".
pub fn header(s: &Snapshot) -> String {
    let who = match &s.login {
        Login::LoggedIn(name) => format!("Logged in as {name}"),
        Login::LoggedOut | Login::NotConfigured => "Not logged in".to_string(),
        Login::Token(origin) => format!("Using the token from {origin}"),
    };
    format!("{TITLE} — {who}")
}

/// The status line: "Synced 3 min ago · 0 pending", "Syncing… 12,400 of 80,000", ...
pub fn status_line(s: &Snapshot, now: DateTime<Utc>) -> String {
    if s.logging_in {
        return "Logging in — finish in the browser".to_string();
    }
    let line = match &s.activity {
        Activity::Starting => "Starting…".to_string(),
        Activity::Syncing { delivered, found } if *found > 0 => {
            format!(
                "Syncing… {} of {}",
                thousands(*delivered),
                thousands(*found)
            )
        }
        Activity::Syncing { .. } => "Syncing…".to_string(),
        Activity::Synced { at, quarantined } => {
            let ago = crate::status::ago(now.signed_duration_since(*at));
            let mut line = format!("Synced {ago} · 0 pending");
            if *quarantined > 0 {
                line.push_str(&format!(" · {} quarantined", thousands(*quarantined)));
            }
            line
        }
        Activity::LoginRequired => "Login required".to_string(),
        Activity::Failed { failure, retry_at } => {
            let what = match failure {
                Failure::UpstreamUnreachable => "Upstream unreachable",
                Failure::AwServerUnreachable => "aw-server unreachable",
                Failure::Other => "Sync failed",
            };
            format!(
                "{what} — retrying {}",
                after(retry_at.signed_duration_since(now))
            )
        }
        Activity::NotConfigured(why) => format!("Not configured: {why}"),
    };
    if s.paused && !matches!(s.activity, Activity::Syncing { .. }) {
        format!("Paused · {}", lower_first(&line))
    } else {
        line
    }
}

/// The menu for `s` at `now`.
pub fn menu(s: &Snapshot, now: DateTime<Utc>) -> Menu {
    let mut items = vec![
        Item::Label(header(s)),
        Item::Label(status_line(s, now)),
        Item::Separator,
    ];
    match &s.login {
        Login::LoggedIn(_) => items.push(Item::Button {
            label: "Log out".into(),
            action: Action::LogOut,
            enabled: !s.logging_in,
        }),
        Login::LoggedOut => items.push(Item::Button {
            label: "Log in…".into(),
            action: Action::LogIn,
            enabled: !s.logging_in,
        }),
        // Nothing the menu could do: the token comes from outside, or [auth] is missing.
        Login::Token(_) => {}
        Login::NotConfigured => items.push(Item::Button {
            label: "Log in… (set [auth] in the config file first)".into(),
            action: Action::LogIn,
            enabled: false,
        }),
    }
    let can_sync = !matches!(
        s.activity,
        Activity::NotConfigured(_) | Activity::Syncing { .. }
    );
    items.push(Item::Button {
        label: "Sync now".into(),
        action: Action::SyncNow,
        enabled: can_sync,
    });
    items.push(if s.paused {
        Item::Button {
            label: "Resume syncing".into(),
            action: Action::Resume,
            enabled: true,
        }
    } else {
        Item::Button {
            label: "Pause syncing".into(),
            action: Action::Pause,
            enabled: true,
        }
    });
    items.push(Item::Separator);
    items.push(Item::Button {
        label: "Open log folder".into(),
        action: Action::OpenLogFolder,
        enabled: true,
    });
    items.push(Item::Button {
        label: "Open config file".into(),
        action: Action::OpenConfigFile,
        enabled: true,
    });
    items
}

/// The icon for `s`: a running cycle shows as syncing even when paused (a "Sync now" while
/// paused runs one), then pause, then whatever needs the user.
pub fn icon(s: &Snapshot) -> IconState {
    match &s.activity {
        Activity::Syncing { .. } => IconState::Syncing,
        _ if s.paused => IconState::Paused,
        Activity::Starting => IconState::Syncing,
        Activity::Synced { quarantined: 0, .. } => IconState::Synced,
        Activity::Synced { .. }
        | Activity::LoginRequired
        | Activity::Failed { .. }
        | Activity::NotConfigured(_) => IconState::NeedsAttention,
    }
}

/// "12,400".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "in 5 min", for a wait of `d` (rounded up: "in 1 min" for 30 s would be a lie the other way,
/// so seconds stay seconds); "now" when it is due.
pub fn after(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s <= 0 => "now".to_string(),
        s if s < 60 => format!("in {s} s"),
        s if s < 3600 => format!("in {} min", (s + 59) / 60),
        s => format!("in {} h", (s + 3599) / 3600),
    }
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        // "aw-server unreachable" is already lower case; "Synced" becomes "synced".
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap()
    }

    fn snap(login: Login, activity: Activity) -> Snapshot {
        Snapshot {
            login,
            activity,
            ..Default::default()
        }
    }

    fn alice() -> Login {
        Login::LoggedIn("alice".into())
    }

    /// The labels, with the buttons' enabled state: what a user reads.
    fn labels(m: &Menu) -> Vec<String> {
        m.iter()
            .map(|i| match i {
                Item::Label(l) => l.clone(),
                Item::Button { label, enabled, .. } if *enabled => label.clone(),
                Item::Button { label, .. } => format!("({label})"),
                Item::Separator => "---".into(),
            })
            .collect()
    }

    #[test]
    fn logged_out_offers_the_login() {
        let m = menu(&snap(Login::LoggedOut, Activity::LoginRequired), now());
        assert_eq!(
            labels(&m),
            [
                "Samay Sync — Not logged in",
                "Login required",
                "---",
                "Log in…",
                "Sync now",
                "Pause syncing",
                "---",
                "Open log folder",
                "Open config file"
            ]
        );
        assert_eq!(
            icon(&snap(Login::LoggedOut, Activity::LoginRequired)),
            IconState::NeedsAttention
        );
    }

    #[test]
    fn logged_in_and_synced() {
        let s = snap(
            alice(),
            Activity::Synced {
                at: now() - chrono::Duration::minutes(3),
                quarantined: 0,
            },
        );
        let m = menu(&s, now());
        assert_eq!(
            labels(&m)[..4],
            [
                "Samay Sync — Logged in as alice",
                "Synced 3 min ago · 0 pending",
                "---",
                "Log out"
            ]
        );
        assert_eq!(icon(&s), IconState::Synced);
    }

    #[test]
    fn syncing_counts_with_separators_and_sync_now_waits() {
        let s = snap(
            alice(),
            Activity::Syncing {
                delivered: 12_400,
                found: 80_000,
            },
        );
        let l = labels(&menu(&s, now()));
        assert_eq!(l[1], "Syncing… 12,400 of 80,000");
        assert!(l.contains(&"(Sync now)".to_string()), "{l:?}");
        assert_eq!(icon(&s), IconState::Syncing);
        let nothing_yet = snap(
            alice(),
            Activity::Syncing {
                delivered: 0,
                found: 0,
            },
        );
        assert_eq!(status_line(&nothing_yet, now()), "Syncing…");
    }

    #[test]
    fn a_failure_says_when_the_next_try_is() {
        let s = snap(
            alice(),
            Activity::Failed {
                failure: Failure::UpstreamUnreachable,
                retry_at: now() + chrono::Duration::seconds(290),
            },
        );
        assert_eq!(
            status_line(&s, now()),
            "Upstream unreachable — retrying in 5 min"
        );
        assert_eq!(icon(&s), IconState::NeedsAttention);
        let other = Snapshot {
            activity: Activity::Failed {
                failure: Failure::Other,
                retry_at: now() - chrono::Duration::seconds(1),
            },
            ..s
        };
        assert_eq!(status_line(&other, now()), "Sync failed — retrying now");
    }

    #[test]
    fn paused_offers_resume_and_says_so() {
        let s = Snapshot {
            paused: true,
            ..snap(
                alice(),
                Activity::Synced {
                    at: now() - chrono::Duration::hours(2),
                    quarantined: 0,
                },
            )
        };
        let l = labels(&menu(&s, now()));
        assert_eq!(l[1], "Paused · synced 2 h ago · 0 pending");
        assert!(l.contains(&"Resume syncing".to_string()), "{l:?}");
        assert!(!l.iter().any(|x| x.contains("Pause syncing")), "{l:?}");
        // Sync now still runs one cycle while paused.
        assert!(l.contains(&"Sync now".to_string()), "{l:?}");
        assert_eq!(icon(&s), IconState::Paused);
    }

    #[test]
    fn a_login_in_progress_disables_the_login() {
        let s = Snapshot {
            logging_in: true,
            ..snap(Login::LoggedOut, Activity::LoginRequired)
        };
        let l = labels(&menu(&s, now()));
        assert_eq!(l[1], "Logging in — finish in the browser");
        assert!(l.contains(&"(Log in…)".to_string()), "{l:?}");
    }

    #[test]
    fn a_fixed_token_or_no_auth_has_nothing_to_log_in_to() {
        let token = snap(
            Login::Token("AW_SYNC_SAMAY_TOKEN".into()),
            Activity::Starting,
        );
        let l = labels(&menu(&token, now()));
        assert_eq!(
            l[0],
            "Samay Sync — Using the token from AW_SYNC_SAMAY_TOKEN"
        );
        assert!(!l.iter().any(|x| x.contains("Log")), "{l:?}");
        let none = snap(
            Login::NotConfigured,
            Activity::NotConfigured("sync.base_url is empty".into()),
        );
        let l = labels(&menu(&none, now()));
        assert_eq!(l[1], "Not configured: sync.base_url is empty");
        assert!(
            l.contains(&"(Log in… (set [auth] in the config file first))".to_string()),
            "{l:?}"
        );
        assert!(l.contains(&"(Sync now)".to_string()), "{l:?}");
    }

    #[test]
    fn quarantined_events_need_attention() {
        let s = snap(
            alice(),
            Activity::Synced {
                at: now(),
                quarantined: 1_234,
            },
        );
        assert_eq!(
            status_line(&s, now()),
            "Synced just now · 0 pending · 1,234 quarantined"
        );
        assert_eq!(icon(&s), IconState::NeedsAttention);
    }

    /// A click on macOS/Windows comes back as the item's id: every action survives the trip,
    /// and an id the menu never gave out is no action.
    #[test]
    fn every_action_round_trips_through_its_menu_id() {
        for a in Action::ALL {
            assert_eq!(Action::from_id(a.id()), Some(a));
        }
        for bad in ["", "7", "LogIn", "log-in "] {
            assert_eq!(Action::from_id(bad), None, "{bad:?}");
        }
        // Every button of every state's menu comes back (an action missing from ALL would not).
        let states = [
            snap(Login::LoggedOut, Activity::LoginRequired),
            snap(alice(), Activity::Starting),
            Snapshot {
                paused: true,
                ..snap(alice(), Activity::Starting)
            },
        ];
        for s in &states {
            for item in menu(s, now()) {
                if let Item::Button { action, .. } = item {
                    assert_eq!(Action::from_id(action.id()), Some(action));
                }
            }
        }
    }

    /// The pixel icon: square RGBA, transparent corners, and four states that differ.
    #[test]
    fn each_state_has_its_own_pixel_icon() {
        let states = [
            IconState::Synced,
            IconState::Syncing,
            IconState::Paused,
            IconState::NeedsAttention,
        ];
        let icons: Vec<Vec<u8>> = states.iter().map(|s| s.rgba(32)).collect();
        for icon in &icons {
            assert_eq!(icon.len(), 32 * 32 * 4);
            assert_eq!(&icon[..4], &[0, 0, 0, 0], "corner is transparent");
            let centre = (16 * 32 + 16) * 4;
            assert_eq!(icon[centre + 3], 0xff, "centre is opaque");
        }
        for (i, a) in icons.iter().enumerate() {
            for b in &icons[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(IconState::Synced.rgba(0).len(), 0);
    }

    #[test]
    fn numbers_and_waits_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(after(chrono::Duration::seconds(42)), "in 42 s");
        assert_eq!(after(chrono::Duration::seconds(61)), "in 2 min");
        assert_eq!(after(chrono::Duration::seconds(300)), "in 5 min");
        assert_eq!(after(chrono::Duration::seconds(7200)), "in 2 h");
    }
}
