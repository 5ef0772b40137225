'use strict';
// Sends one call of each kind (track, identify, group, page, screen, alias)
// with @segment/analytics-node, the way an application would, then
// closeAndFlush(). e2e_segmentapi_test.go runs it against a recording proxy
// in front of gwenrelay's Segment-compatible API.
//
// Environment:
//   SEGMENTAPI_HOST       base URL the library sends to (its `host` setting)
//   SEGMENTAPI_WRITE_KEY  write key (gwenrelay's inbound token)
//   SEGMENTAPI_RUN        prefix that makes this run's user ids unique
//
// It prints one line `RESULT {"delivered":[{"type","messageId"}...],"errors":[...]}`
// and exits 0 only if every call's callback reported success; 1 if any
// reported an error (or the library emitted one); 2 if it did not finish
// within its own deadline.
const { Analytics } = require('@segment/analytics-node');

const host = process.env.SEGMENTAPI_HOST;
const writeKey = process.env.SEGMENTAPI_WRITE_KEY;
const run = process.env.SEGMENTAPI_RUN || 'node';
if (!host || !writeKey) {
  console.error('SEGMENTAPI_HOST and SEGMENTAPI_WRITE_KEY must be set');
  process.exit(1);
}

// A run that hangs must not hold the test until its own timeout.
setTimeout(() => {
  console.error('send.cjs: not finished within 60 s');
  process.exit(2);
}, 60_000).unref();

const analytics = new Analytics({
  writeKey,
  host,
  flushAt: 2, // several batches for a handful of calls
  flushInterval: 200,
  maxRetries: 3,
  httpRequestTimeout: 10_000,
});

const delivered = [];
const errors = [];
analytics.on('error', (err) => {
  errors.push(`emitted error: ${err && err.code} ${err && err.reason}`);
});

const calls = [];
function call(kind, params) {
  calls.push(kind);
  analytics[kind](params, (err, ctx) => {
    if (err) {
      errors.push(`${kind}: ${err && err.stack ? err.stack : err}`);
      return;
    }
    delivered.push({ type: ctx.event.type, messageId: ctx.event.messageId });
  });
}

const user = `${run}-user`;
const anon = `${run}-anon-0f8c`;
const richContext = {
  ip: '203.0.113.7',
  locale: 'fr-CA',
  page: { path: '/shop/checkout', referrer: 'https://example.com/?q=a&b=c', title: 'Caisse – ☃' },
  device: { id: 'dev-1', manufacturer: 'Acme', model: 'A1' },
  traits: { plan: 'gold', seats: 12 },
  custom: {
    nested: { deep: [1, 2.5, { x: null, y: true, z: 'ünïcödé 🎮' }], empty: {} },
    list: [],
    big: 9007199254740991,
  },
};
const integrations = { All: false, Mixpanel: true, Amplitude: { session_id: 1717171717 } };

call('track', {
  userId: user,
  event: 'Item Purchased',
  properties: {
    revenue: 39.95,
    currency: 'EUR',
    items: [{ sku: 'A-1', qty: 2, tags: ['x', 'y'] }, { sku: 'B-2', qty: 1, tags: [] }],
    coupon: null,
    firstPurchase: true,
    note: 'line1\nline2 "quoted" </script> \u2028',
  },
  context: richContext,
  integrations,
  messageId: `${run}-explicit-track`,
});
call('track', {
  anonymousId: anon,
  event: 'Level Started',
  properties: { level: 3 },
  timestamp: new Date(Date.now() - 90 * 60 * 1000), // an hour and a half ago
});
call('identify', {
  userId: user,
  anonymousId: anon,
  traits: { email: 'ada@example.com', name: 'Ada', address: { city: 'Paris', zip: '75001' }, createdAt: '2024-02-29T12:00:00.000Z' },
  context: { ...richContext, active: false },
  integrations,
});
call('identify', {
  anonymousId: anon,
  traits: { favoriteColor: 'teal', visits: 0 },
  timestamp: '2025-06-01T08:30:00.123+02:00',
});
call('group', {
  userId: user,
  groupId: `${run}-org-42`,
  traits: { name: 'Acme Inc', employees: 250, industry: 'games', address: { country: 'DE' } },
  context: { custom: { source: 'backoffice' } },
});
call('page', {
  anonymousId: anon,
  category: 'Docs',
  name: 'Getting Started',
  properties: { url: 'https://example.com/docs/start', search: '?ref=nav', readingTime: 4.5 },
  context: richContext,
});
call('screen', {
  userId: user,
  name: 'Inventory',
  properties: { slots: 24, filter: { rarity: ['epic', 'legendary'] } },
  integrations: { 'Google Analytics': { clientId: 'ga-123' } },
  timestamp: new Date(Date.now() - 5 * 1000),
});
call('alias', {
  userId: user,
  previousId: anon,
  context: { custom: { reason: 'signup' } },
});

analytics
  .closeAndFlush({ timeout: 30_000 })
  .then(() => {
    if (delivered.length !== calls.length) {
      errors.push(`${delivered.length} of ${calls.length} calls reported success`);
    }
    console.log('RESULT ' + JSON.stringify({ delivered, errors }));
    process.exit(errors.length ? 1 : 0);
  })
  .catch((err) => {
    errors.push(`closeAndFlush: ${err && err.stack ? err.stack : err}`);
    console.log('RESULT ' + JSON.stringify({ delivered, errors }));
    process.exit(1);
  });
