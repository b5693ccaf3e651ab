#!/usr/bin/env bash
# Plays the user in a browser for login tests: point $BROWSER at this script and the app's
# `webbrowser::open(url)` runs `play-user.sh <authorization url>`.
#
# With curl and a private cookie jar it walks oidc-provider's devInteractions like a person would:
# GET the authorization URL -> 303 /interaction/{uid} -> read the page -> POST the login form
# (prompt=login, login=$PLAY_USER, any password) -> 303 /auth/{uid} -> 303 /interaction/{uid2}
# -> POST prompt=consent (when asked) -> 303 to the redirect_uri with code/state/iss, which it
# then GETs: that request is the "browser" arriving at the app's loopback listener.
#
# Device flow (RFC 8628): with PLAY_USER_CODE set, the URL is the provider's verification page
# (`verification_uri`), opened on "another device": the script types the code into its form,
# confirms (or aborts, for deny) on the next page, then logs in and consents as above. It ends on
# the provider's "Sign-in Success" page instead of a redirect to the app; the app learns of the
# approval by polling.
#
# Environment knobs:
#   PLAY_USER           login name (default alice); it becomes the subject (sub)
#   PLAY_USER_CODE      the user code the app showed: play the device flow (see above)
#   PLAY_ACTION         approve (default) | deny (abort at the first page: the app gets
#                       error=access_denied) | ignore (read the first page, then walk away: the
#                       user closed the tab, the app's listener must time out)
#   PLAY_LOG            file to append a line per step to (never codes, tokens or full URLs
#                       with query strings)
#   PLAY_REDIRECT_FILE  file to write the final redirect URL to (it holds the code: tests only).
#                       A non-http redirect (private-use scheme like app.samay:/callback) cannot
#                       be fetched; it is written there instead, as an OS deep-link handoff.
#   PLAY_DELIVER        1 (default): GET the final http redirect (the app's listener); 0: only
#                       record it in PLAY_REDIRECT_FILE (a test acting as the app by itself)
#   PLAY_DELAY          seconds to wait before the first request (default 0): a slow user
#   PLAY_MAX_TIME       seconds for each curl call (default 10)
#
# webbrowser 1.x spawns $BROWSER in the background with stdin/stdout/stderr set to null and never
# waits for it (nor looks at its exit status), so this script runs in the foreground and needs no
# backgrounding of its own; PLAY_LOG is the only way to see what it did when the app ran it.
# Exit status (for direct callers): 0 when the final redirect was delivered, non-zero otherwise.
set -uo pipefail

url="${1:-}"
user="${PLAY_USER:-alice}"
action="${PLAY_ACTION:-approve}"
max_time="${PLAY_MAX_TIME:-10}"
log_file="${PLAY_LOG:-}"
deliver="${PLAY_DELIVER:-1}"
delay="${PLAY_DELAY:-0}"

log() {
    if [ -n "$log_file" ]; then
        printf '%s play-user[%s]: %s\n' "$(date +%H:%M:%S)" "$$" "$*" >>"$log_file"
    fi
    printf 'play-user: %s\n' "$*" >&2
}
fail() {
    log "FAIL: $*"
    exit 1
}
# The URL without its query (which may hold a code, state or PKCE challenge).
redact() { printf '%s' "${1%%\?*}"; }

[ -n "$url" ] || fail "usage: play-user.sh <authorization url>"
case "$action" in approve | deny | ignore) ;; *) fail "PLAY_ACTION=$action: use approve, deny or ignore" ;; esac
command -v curl >/dev/null 2>&1 || fail "curl not found"

work="$(mktemp -d "${TMPDIR:-/tmp}/play-user.XXXXXX")" || fail "mktemp"
trap 'rm -rf "$work"' EXIT
jar="$work/cookies"
body="$work/body"

# Origin of the provider (scheme://host:port), from the authorization URL.
origin="$(printf '%s' "$url" | sed -E 's#^([a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]+).*#\1#')"

# What an error page says (oidc-provider: <pre><strong>error</strong>: invalid_...</pre>).
page_text() {
    local text
    text="$(grep -o '<pre>.*</pre>' "$body" | sed -e 's#</pre>#; #g' -e 's/<[^>]*>//g' -e 's/&#39;/'"'"'/g' | tr '\n' ' ')"
    [ -n "$text" ] || text="$(head -c 300 "$body" | tr '\n' ' ')"
    printf '%s' "$text"
}

# request METHOD URL [curl args...]: sets $status and $location (absolute, or empty).
request() {
    local method="$1" target="$2"
    shift 2
    status="$(curl --silent --show-error --max-time "$max_time" --cookie "$jar" --cookie-jar "$jar" \
        --request "$method" --output "$body" --dump-header "$work/headers" --write-out '%{http_code}' \
        "$@" -- "$target")" || fail "$method $(redact "$target"): curl failed (exit $?)"
    # The raw Location header (curl's %{redirect_url} rewrites `app.samay:/callback` into
    # `app.samay://callback/`); a path-absolute one is on the provider.
    location="$(sed -n 's/^[Ll]ocation:[[:space:]]*//p' "$work/headers" | tr -d '\r' | tail -n1)"
    case "$location" in /*) location="$origin$location" ;; esac
    log "$method $(redact "$target") -> $status${location:+ -> $(redact "$location")}"
}

log "user=$user action=$action authorize $(redact "$url")"
if [ "$delay" != 0 ]; then
    log "waiting ${delay}s before opening the page (PLAY_DELAY)"
    sleep "$delay"
fi
next="$url"

# A hidden or text input's value in the page just read, and the form's action.
field() { sed -n 's/.*name="'"$1"'" value="\([^"]*\)".*/\1/p' "$body" | head -n1; }
form_action() {
    local action
    action="$(sed -n 's/.*<form[^>]*action="\([^"]*\)".*/\1/p' "$body" | head -n1)"
    case "$action" in /*) action="$origin$action" ;; "") action="$origin/device" ;; esac
    printf '%s' "$action"
}

user_code="${PLAY_USER_CODE:-}"
if [ -n "$user_code" ]; then
    # The verification page: a form asking for the code.
    request GET "$url"
    [ "$status" = 200 ] || fail "verification page answered $status: $(page_text)"
    xsrf="$(field xsrf)"
    grep -q 'name="user_code"' "$body" || fail "verification page has no code field: $(page_text)"
    log "typing the user code"
    request POST "$(form_action)" --data-urlencode "xsrf=$xsrf" --data-urlencode "user_code=$user_code"
    [ "$status" = 200 ] || fail "entering the code answered $status: $(page_text)"
    grep -q 'name="confirm"' "$body" || fail "the code was not accepted: $(page_text)"
    log "page asks to confirm the device"
    case "$action" in
    ignore)
        log "walking away without answering (PLAY_ACTION=ignore)"
        exit 0
        ;;
    deny)
        request POST "$(form_action)" --data-urlencode "xsrf=$(field xsrf)" \
            --data-urlencode "user_code=$(field user_code)" --data-urlencode "abort=yes"
        log "aborted the device sign-in ($status)"
        exit 0
        ;;
    esac
    request POST "$(form_action)" --data-urlencode "xsrf=$(field xsrf)" \
        --data-urlencode "user_code=$(field user_code)" --data-urlencode "confirm=yes"
    case "$status" in 30[1237]) ;; *) fail "confirming answered $status: $(page_text)" ;; esac
    next="$location"
fi
for _ in $(seq 1 12); do
    case "$next" in
    "$origin"/interaction/*)
        # A page for the user: the provider asks for a login or a consent.
        uid="${next#"$origin"/interaction/}"
        uid="${uid%%[/?#]*}"
        request GET "$next"
        [ "$status" = 200 ] || fail "interaction page answered $status"
        if grep -q 'name="prompt" value="login"' "$body"; then
            prompt=login
        elif grep -q 'name="prompt" value="consent"' "$body"; then
            prompt=consent
        else
            fail "interaction page has neither a login nor a consent form: $(head -c 300 "$body" | tr '\n' ' ')"
        fi
        log "page asks for: $prompt"
        case "$action" in
        ignore)
            log "walking away without answering (PLAY_ACTION=ignore)"
            exit 0
            ;;
        deny)
            request GET "$origin/interaction/$uid/abort"
            ;;
        approve)
            if [ "$prompt" = login ]; then
                request POST "$origin/interaction/$uid" --data-urlencode "prompt=login" \
                    --data-urlencode "login=$user" --data-urlencode "password=x"
            else
                request POST "$origin/interaction/$uid" --data-urlencode "prompt=consent"
            fi
            ;;
        esac
        ;;
    "$origin"/*)
        # The provider's own endpoints (/auth, /auth/{uid} to resume after an interaction,
        # /device/{uid} in the device flow).
        request GET "$next"
        if [ -n "$user_code" ] && [ "$status" = 200 ] && grep -q '<title>Sign-in Success</title>' "$body"; then
            log "the provider confirmed the device sign-in"
            exit 0
        fi
        ;;
    http://* | https://*)
        # Leaving the provider: this is the redirect to the app.
        if [ -n "${PLAY_REDIRECT_FILE:-}" ]; then
            printf '%s\n' "$next" >"$PLAY_REDIRECT_FILE"
        fi
        case "$next" in
        *[?\&]error=*) log "redirect carries an error: $(printf '%s' "$next" | sed -nE 's/.*[?&](error=[^&#]*).*/\1/p')" ;;
        esac
        if [ "$deliver" = 0 ]; then
            log "redirect to $(redact "$next") recorded, not delivered (PLAY_DELIVER=0)"
            exit 0
        fi
        request GET "$next"
        log "delivered the redirect to the app ($status)"
        exit 0
        ;;
    *)
        # A private-use scheme (app.samay:/callback): the OS would hand it to the app.
        if [ -n "${PLAY_REDIRECT_FILE:-}" ]; then
            printf '%s\n' "$next" >"$PLAY_REDIRECT_FILE"
            log "redirect to $(redact "$next") written to PLAY_REDIRECT_FILE"
            exit 0
        fi
        fail "redirect to $(redact "$next") needs PLAY_REDIRECT_FILE"
        ;;
    esac
    case "$status" in
    30[1237]) ;;
    *) fail "expected a redirect, got $status: $(page_text)" ;;
    esac
    [ -n "$location" ] || fail "redirect $status without a Location"
    next="$location"
done
fail "too many redirects"
