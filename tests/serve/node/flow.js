// The official stripe Node library drives `offterm serve` through a server-driven flow.
//
// Run by tests/serve/test_serve_node.py, which starts the service, the processor simulator behind a
// fault proxy, and a webhook recorder, and passes (environment):
//   OFFTERM_URL        the service's base URL (http://127.0.0.1:<port>)
//   OFFTERM_KEY        its secret key
//   WEBHOOK_SECRET     the whsec_ the service signs webhooks with
//   CONTROL_URL        the test's control server: POST /network/{down,pass} cuts or restores the
//                      processor; GET /deliveries returns the raw webhook deliveries {body, signature}
//
// Prints one JSON object on stdout: what each payment became and what the webhooks said.  The Python
// test asserts on it and on the simulator's ledger; this script only fails (exit 1) when a step
// throws or times out.
'use strict';

const Stripe = require('stripe');

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const base = new URL(env('OFFTERM_URL'));
const stripe = new Stripe(env('OFFTERM_KEY'), {
  host: base.hostname,
  port: Number(base.port),
  protocol: base.protocol.replace(':', ''),
  maxNetworkRetries: 2, // retries carry the library's Idempotency-Key: the one payment, never two
  timeout: 30000,
  telemetry: false,
});
const webhookSecret = env('WEBHOOK_SECRET');
const control = env('CONTROL_URL');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what, check, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await check();
    if (value) return value;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function network(mode) {
  const response = await fetch(`${control}/network/${mode}`, { method: 'POST' });
  if (!response.ok) throw new Error(`control: network ${mode} -> ${response.status}`);
}

// offterm's extension paths, through the library's own request machinery (auth, retries)
async function extension(method, path, params) {
  const response = await stripe.rawRequest(method, path, params);
  return JSON.parse(typeof response === 'string' ? response : JSON.stringify(response));
}

async function pay(readerId, amount, { card, metadata } = {}) {
  const intent = await stripe.paymentIntents.create({
    amount,
    currency: 'usd',
    payment_method_types: ['card_present'],
    metadata: metadata || {},
  });
  const started = await stripe.terminal.readers.processPaymentIntent(readerId, { payment_intent: intent.id });
  if (started.action.status !== 'in_progress') throw new Error(`action ${started.action.status}, not in_progress`);
  await stripe.testHelpers.terminal.readers.presentPaymentMethod(
    readerId,
    card ? { card_present: { number: card } } : {},
  );
  const reader = await until(`the reader action on ${intent.id}`, async () => {
    const r = await stripe.terminal.readers.retrieve(readerId);
    return r.action && r.action.status !== 'in_progress' ? r : null;
  });
  return { id: intent.id, action: reader.action };
}

function summary(intent) {
  return {
    id: intent.id,
    status: intent.status,
    amount: intent.amount,
    amount_received: intent.amount_received,
    requires_upload: intent.offline_details ? intent.offline_details.requires_upload : null,
    last4: intent.offline_details ? intent.offline_details.card_present_details.last4 : null,
    offline_id: intent.offterm.offline_id,
    forwarding: intent.offterm.forwarding,
    processor_payment_intent: intent.offterm.processor_payment_intent,
    decline_code: intent.last_payment_error ? intent.last_payment_error.decline_code || null : null,
  };
}

function subjectOf(event) {
  const obj = event.data.object;
  if (obj.object === 'payment_intent') return obj.id;
  const action = obj.action || {};
  return action.process_payment_intent ? action.process_payment_intent.payment_intent : null;
}

async function main() {
  const out = {};
  const readers = await stripe.terminal.readers.list();
  out.readers = readers.data.map((r) => ({ id: r.id, status: r.status, device_type: r.device_type }));
  const readerId = readers.data[0].id;

  // online
  const online = await pay(readerId, 1500);
  out.online = { action: online.action.status, intent: summary(await stripe.paymentIntents.retrieve(online.id)) };

  // an online decline fails the action
  const refused = await pay(readerId, 1200, { card: '4000000000000002' });
  out.online_decline = {
    action: refused.action.status,
    failure_code: refused.action.failure_code,
    intent: summary(await stripe.paymentIntents.retrieve(refused.id)),
  };

  // offline: the processor is cut; both payments are stored, one will be declined after forwarding
  await network('down');
  const stored = await pay(readerId, 2500, { metadata: { order: 'N-1' } });
  const doomed = await pay(readerId, 3100, { card: '4000000000000002' });
  out.offline = {
    action: stored.action.status,
    intent: summary(await stripe.paymentIntents.retrieve(stored.id)),
    declined_action: doomed.action.status,
    status: await extension('GET', '/v1/offterm/offline_status', {}),
  };

  // back online: forward now, then each stored payment says what the processor made of it
  await network('pass');
  out.forward = await extension('POST', '/v1/offterm/forward', { timeout: 60 });
  const forwarded = await until('forwarding', async () => {
    const intent = await stripe.paymentIntents.retrieve(stored.id);
    return intent.offterm.forwarding === 'forwarded' ? intent : null;
  });
  const declined = await until('the decline after forwarding', async () => {
    const intent = await stripe.paymentIntents.retrieve(doomed.id);
    return intent.offterm.forwarding === 'declined' ? intent : null;
  });
  out.forwarded = summary(forwarded);
  out.declined = summary(declined);

  // webhooks: every delivery verified with the library's own check; a tampered body must not verify
  const expected = 8; // online 2, online decline 2, two stored 2 (action_succeeded), forwarded 1, declined 1
  const deliveries = await until(`${expected} webhooks`, async () => {
    const response = await fetch(`${control}/deliveries`);
    const all = await response.json();
    return all.length >= expected ? all : null;
  });
  const events = [];
  let verified = 0;
  const failures = [];
  for (const delivery of deliveries) {
    try {
      events.push(stripe.webhooks.constructEvent(delivery.body, delivery.signature, webhookSecret));
      verified += 1;
    } catch (err) {
      failures.push(String(err.message || err));
    }
  }
  let tamperedRejected = false;
  try {
    stripe.webhooks.constructEvent(deliveries[0].body.replace('"livemode":false', '"livemode":true'),
      deliveries[0].signature, webhookSecret);
  } catch (err) {
    tamperedRejected = err.type === 'StripeSignatureVerificationError';
  }
  const perPayment = {};
  for (const event of events) {
    const subject = subjectOf(event);
    (perPayment[subject] = perPayment[subject] || []).push(event.type);
  }
  out.webhooks = {
    delivered: deliveries.length,
    verified,
    failures,
    tampered_rejected: tamperedRejected,
    types: events.map((e) => e.type),
    per_payment: perPayment,
  };
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  process.stderr.write(`flow failed: ${err && err.stack ? err.stack : err}\n`);
  if (err && err.raw) process.stderr.write(`stripe error: ${JSON.stringify(err.raw)}\n`);
  process.exit(1);
});
