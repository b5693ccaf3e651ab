// A real, certified OpenID provider (panva/oidc-provider) on loopback for aw-sync-samay's
// end-to-end login tests. Installed by scripts/install-peers.sh into <repo>/.peers/oidc.
//
// Environment:
//   PORT            port to listen on; 0 (default) picks a free one (race-free: the socket is
//                   bound first, and the issuer is built from the port it got)
//   CLIENT_ID       the one registered client (default "aw-sync-samay")
//   ACCESS_TTL      access token lifetime in seconds (default 3600)
//   REFRESH_TTL     refresh token lifetime in seconds (default 14 days)
//   CLOCK_TOLERANCE seconds a token stays accepted past its exp (default 0 here; oidc-provider's
//                   own default is 15, which would keep a 3 s access token alive for ~18 s)
//   REFRESH_TOKENS  "offline_access" (default; the spec behaviour: a refresh token only when the
//                   request has scope offline_access AND prompt=consent) or "always" (a refresh
//                   token for every authorization_code grant of this client, no prompt=consent)
//   RESOURCE        a resource indicator (RFC 8707), e.g. "https://samay.test/api": tokens requested
//                   with resource=RESOURCE are for that API (aud = RESOURCE, scope "samay");
//                   unset (default): no resource server, any resource is invalid_target
//   RESOURCE_FORMAT "jwt" (default; RFC 9068 JWT access tokens signed with the provider's keys)
//                   or "opaque" (only introspection can tell what they are)
//   RS_CLIENT_ID, RS_CLIENT_SECRET
//                   register a confidential client (client_secret_basic) for the resource
//                   server, which uses it to introspect tokens (RFC 7662)
//   OIDC_MODULES    the node_modules holding oidc-provider (default <repo>/.peers/oidc/node_modules)
//   EXIT_WITH_STDIN "1": exit when stdin reaches EOF, so the process dies with its parent even
//                   when the parent is killed before it can clean up
//
// Prints exactly one line "READY <issuer>" on stdout once it accepts connections. Everything
// else (oidc-provider's warnings, grant errors) goes to stderr.

import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const modules = process.env.OIDC_MODULES
  ? resolve(process.env.OIDC_MODULES)
  : join(here, '..', '..', '.peers', 'oidc', 'node_modules');

let Provider;
let errors;
try {
  ({ default: Provider, errors } = await import(
    pathToFileURL(join(modules, 'oidc-provider', 'lib', 'index.js')).href
  ));
} catch (err) {
  console.error(
    `provider.mjs: cannot load oidc-provider from ${modules} (${err.code || err.message}); ` +
      'run scripts/install-peers.sh',
  );
  process.exit(2);
}

function intEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    console.error(`provider.mjs: ${name}=${raw} is not a non-negative integer`);
    process.exit(2);
  }
  return value;
}

const port = intEnv('PORT', 0);
const clientId = process.env.CLIENT_ID || 'aw-sync-samay';
const accessTtl = intEnv('ACCESS_TTL', 3600);
const refreshTtl = intEnv('REFRESH_TTL', 14 * 24 * 3600);
const clockTolerance = intEnv('CLOCK_TOLERANCE', 0);
const refreshPolicy = process.env.REFRESH_TOKENS || 'offline_access';
if (!['offline_access', 'always'].includes(refreshPolicy)) {
  console.error(`provider.mjs: REFRESH_TOKENS=${refreshPolicy}: use offline_access or always`);
  process.exit(2);
}

const resource = process.env.RESOURCE || '';
const resourceFormat = process.env.RESOURCE_FORMAT || 'jwt';
if (!['jwt', 'opaque'].includes(resourceFormat)) {
  console.error(`provider.mjs: RESOURCE_FORMAT=${resourceFormat}: use jwt or opaque`);
  process.exit(2);
}
const rsClientId = process.env.RS_CLIENT_ID || '';
const rsClientSecret = process.env.RS_CLIENT_SECRET || '';

if (process.env.EXIT_WITH_STDIN === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));

// Bind first, then build the provider from the port we actually got.
const server = createServer();
await new Promise((ok, fail) => {
  server.once('error', fail);
  server.listen(port, '127.0.0.1', ok);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const configuration = {
  clients: [
    {
      client_id: clientId,
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      // Native clients: a loopback http redirect matches on any port (RFC 8252 §7.3);
      // private-use schemes are accepted as registered.
      redirect_uris: ['http://127.0.0.1/callback', 'app.samay:/callback', 'samay://callback'],
      grant_types: [
        'authorization_code',
        'refresh_token',
        'urn:ietf:params:oauth:grant-type:device_code',
      ],
      response_types: ['code'],
    },
    ...(rsClientId
      ? [
          {
            client_id: rsClientId,
            client_secret: rsClientSecret,
            token_endpoint_auth_method: 'client_secret_basic',
            grant_types: [],
            response_types: [],
            redirect_uris: [],
          },
        ]
      : []),
  ],
  // Public client: PKCE always (oidc-provider only implements S256).
  pkce: { required: () => true },
  rotateRefreshToken: true,
  clockTolerance,
  ttl: {
    AccessToken: accessTtl,
    RefreshToken: refreshTtl,
    AuthorizationCode: 60,
    DeviceCode: 600,
    Grant: refreshTtl,
    Interaction: 600,
    Session: 14 * 24 * 3600,
    IdToken: 3600,
  },
  ...(refreshPolicy === 'always'
    ? {
        issueRefreshToken: async (_ctx, client) =>
          client.clientId === clientId && client.grantTypeAllowed('refresh_token'),
      }
    : {}),
  scopes: ['openid', 'offline_access', 'profile', 'email', ...(resource ? ['samay'] : [])],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
  },
  // Any login name works (devInteractions ignores the password); it becomes the subject.
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          preferred_username: id,
          name: id,
          email: `${id}@example.test`,
          email_verified: true,
        };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    introspection: { enabled: true },
    deviceFlow: { enabled: true },
    // On by default in oidc-provider; with RESOURCE it knows the one API it issues for.
    ...(resource
      ? {
          resourceIndicators: {
            enabled: true,
            async getResourceServerInfo(_ctx, indicator) {
              if (indicator !== resource) throw new errors.InvalidTarget();
              return {
                scope: 'samay',
                audience: resource,
                accessTokenTTL: accessTtl,
                accessTokenFormat: resourceFormat,
                ...(resourceFormat === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
              };
            },
          },
        }
      : {}),
  },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
};

const provider = new Provider(issuer, configuration);

const describe = (err) =>
  [err?.name, err?.error, err?.error_description, err?.error_detail, err?.message]
    .filter((part, i, all) => part && all.indexOf(part) === i)
    .join(' | ');
for (const event of [
  'grant.error',
  'server_error',
  'authorization.error',
  'revocation.error',
  'userinfo.error',
  'introspection.error',
  'device_authorization.error',
  'end_session.error',
]) {
  provider.on(event, (_ctx, err) => {
    // Never the request itself: it may carry codes and tokens.
    console.error(`provider.mjs: ${event}: ${describe(err)}`);
  });
}
provider.on('grant.revoked', (_ctx, grantId) => {
  console.error(`provider.mjs: grant.revoked: grant ${grantId.slice(0, 6)}…`);
});

server.on('request', provider.callback());
console.log(`READY ${issuer}`);
