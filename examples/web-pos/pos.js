// A browser POS on offterm serve: Stripe's server-driven Terminal API, with offline mode, on localhost.
//
// Plain JavaScript, no build step, no library.  The page calls the service with fetch (form-encoded
// bodies, Bearer key, an Idempotency-Key on every POST, as Stripe's libraries do) and learns every
// outcome from the Server-Sent Events stream (EventSource, key as ?access_token=): the reader
// action's end, the payment's forwarding, and the live offline status.  See README.md.
'use strict';

const $ = (id) => document.getElementById(id);
const state = { url: '', key: '', readerId: null, current: null, source: null, payments: new Map() };

const money = (amount, currency) =>
  new Intl.NumberFormat('en-US', { style: 'currency', currency: currency.toUpperCase() }).format(amount / 100);

function idempotencyKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `pos-${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

function form(params, prefix = '', out = new URLSearchParams()) {
  for (const [name, value] of Object.entries(params)) {
    const key = prefix ? `${prefix}[${name}]` : name;
    if (Array.isArray(value)) value.forEach((v, i) => out.append(`${key}[${i}]`, v));
    else if (value && typeof value === 'object') form(value, key, out);
    else out.append(key, String(value));
  }
  return out;
}

async function api(method, path, params) {
  const headers = { Authorization: `Bearer ${state.key}` };
  const init = { method, headers };
  if (method === 'POST') {
    headers['Content-Type'] = 'application/x-www-form-urlencoded';
    headers['Idempotency-Key'] = idempotencyKey();
    init.body = form(params || {}).toString();
  }
  const response = await fetch(state.url + path, init);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
}

// -- what the page shows ------------------------------------------------------------------------------

function showResult(text, tone) {
  const el = $('result');
  el.textContent = text;
  el.className = `result ${tone || ''}`;
}

function showStatus(status) {
  const badge = $('network');
  badge.dataset.status = status.network_status;
  badge.dataset.waiting = String(status.offline_payments_count);
  $('network-status').textContent = status.network_status === 'online' ? 'Online' : 'Offline';
  const amounts = Object.entries(status.offline_payment_amounts_by_currency)
    .map(([currency, amount]) => money(amount, currency))
    .join(' + ');
  const n = status.offline_payments_count;
  $('waiting').textContent = n ? `· ${n} payment${n === 1 ? '' : 's'} waiting to upload (${amounts})` : '';
}

const LABELS = {
  pending: ['pending', 'Waiting for card'],
  paid: ['paid', 'Paid'],
  stored: ['stored', 'Stored offline — not yet authorised'],
  forwarded: ['paid', 'Uploaded — paid'],
  declined: ['failed', 'Declined'],
  declined_after_upload: ['failed', 'Declined after upload'],
  failed: ['failed', 'Failed'],
  canceled: ['failed', 'Canceled'],
  attention: ['failed', 'Needs attention'],
};

function setPayment(id, fields) {
  const payment = { ...(state.payments.get(id) || { id }), ...fields };
  state.payments.set(id, payment);
  let row = document.querySelector(`#payments tr[data-id="${CSS.escape(id)}"]`);
  if (!row) {
    row = document.createElement('tr');
    row.dataset.id = id;
    for (let i = 0; i < 3; i += 1) row.appendChild(document.createElement('td'));
    const code = document.createElement('code');
    row.cells[0].appendChild(code);
    $('payments').tBodies[0].prepend(row);
  }
  const [tone, label] = LABELS[payment.status] || ['pending', payment.status];
  row.dataset.status = payment.status;
  row.cells[0].firstChild.textContent = id;
  row.cells[1].textContent = money(payment.amount, payment.currency);
  const pill = document.createElement('span');
  pill.className = `pill ${tone}`;
  pill.textContent = label;
  row.cells[2].replaceChildren(pill);
  if (payment.detail) row.cells[2].append(` ${payment.detail}`);
}

function logEvent(type, subject) {
  const li = document.createElement('li');
  const code = document.createElement('code');
  code.textContent = type;
  li.append(code, subject ? ` ${subject}` : '');
  li.dataset.type = type;
  $('events').prepend(li);
}

// -- the event stream ---------------------------------------------------------------------------------

const EVENT_TYPES = [
  'terminal.reader.action_succeeded',
  'terminal.reader.action_failed',
  'payment_intent.succeeded',
  'payment_intent.amount_capturable_updated',
  'payment_intent.payment_failed',
  'payment_intent.canceled',
  'offterm.payment.needs_attention',
];

async function onEvent(event) {
  const obj = event.data.object;
  if (event.type.startsWith('terminal.reader.')) {
    const action = obj.action || {};
    const intentId = action.process_payment_intent && action.process_payment_intent.payment_intent;
    logEvent(event.type, intentId);
    if (!intentId) return;
    if (event.type === 'terminal.reader.action_succeeded') {
      // stored offline or paid online: the PaymentIntent says which
      const intent = await api('GET', `/v1/payment_intents/${encodeURIComponent(intentId)}`);
      const offline = intent.offline_details && intent.offline_details.requires_upload;
      setPayment(intentId, { amount: intent.amount, currency: intent.currency, status: offline ? 'stored' : 'paid' });
      if (state.current === intentId) {
        showResult(offline ? 'Stored offline — not yet authorised; it uploads when the network is back.'
          : 'Approved.', offline ? 'warn' : 'ok');
      }
    } else {
      const known = state.payments.get(intentId);
      setPayment(intentId, { ...(known || { amount: 0, currency: 'usd' }), status: 'failed',
        detail: action.failure_message || action.failure_code || '' });
      if (state.current === intentId) showResult(`Failed: ${action.failure_message || action.failure_code}`, 'bad');
    }
    if (state.current === intentId) endPrompt();
    return;
  }
  logEvent(event.type, obj.id);
  const forwarding = obj.offterm ? obj.offterm.forwarding : null;
  const base = { amount: obj.amount, currency: obj.currency };
  if (event.type === 'payment_intent.succeeded' || event.type === 'payment_intent.amount_capturable_updated') {
    setPayment(obj.id, { ...base, status: forwarding === 'forwarded' ? 'forwarded' : 'paid', detail: '' });
  } else if (event.type === 'payment_intent.payment_failed') {
    const error = obj.last_payment_error || {};
    setPayment(obj.id, { ...base, status: forwarding === 'declined' ? 'declined_after_upload' : 'declined',
      detail: error.decline_code || error.code || '' });
  } else if (event.type === 'payment_intent.canceled') {
    setPayment(obj.id, { ...base, status: 'canceled', detail: '' });
  } else if (event.type === 'offterm.payment.needs_attention') {
    setPayment(obj.id, { ...base, status: 'attention', detail: '' });
  }
}

function openStream() {
  if (state.source) state.source.close();
  // EventSource cannot send headers: the key goes as ?access_token= (the service never logs query strings)
  const source = new EventSource(`${state.url}/v1/offterm/events?access_token=${encodeURIComponent(state.key)}`);
  state.source = source;
  source.onopen = () => { $('stream-state').textContent = 'connected'; };
  source.onerror = () => { $('stream-state').textContent = 'reconnecting…'; };
  source.addEventListener('offterm.offline_status', (e) => showStatus(JSON.parse(e.data)));
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (e) => {
      onEvent(JSON.parse(e.data)).catch((err) => logEvent('error', err.message));
    });
  }
}

// -- the checkout -------------------------------------------------------------------------------------

function endPrompt() {
  $('prompt').hidden = true;
  $('charge').disabled = false;
  state.current = null;
}

async function connect(event) {
  event.preventDefault();
  state.url = $('service-url').value.replace(/\/+$/, '');
  state.key = $('service-key').value.trim();
  localStorage.setItem('offterm-pos-url', state.url);
  try {
    const readers = await api('GET', '/v1/terminal/readers');
    const reader = readers.data.find((r) => r.status === 'online') || readers.data[0];
    if (!reader) throw new Error('no reader found');
    state.readerId = reader.id;
    $('reader').textContent = `${reader.label || reader.serial_number} (${reader.device_type})`;
    $('charge').disabled = false;
    showStatus(await api('GET', '/v1/offterm/offline_status'));
    openStream();
    showResult('');
  } catch (err) {
    showResult(`Cannot connect: ${err.message}`, 'bad');
  }
}

async function charge(event) {
  event.preventDefault();
  const amount = Math.round(parseFloat($('amount').value) * 100);
  $('charge').disabled = true;
  showResult('');
  try {
    const intent = await api('POST', '/v1/payment_intents', {
      amount, currency: 'usd', payment_method_types: ['card_present'],
    });
    state.current = intent.id;
    setPayment(intent.id, { amount, currency: 'usd', status: 'pending' });
    await api('POST', `/v1/terminal/readers/${encodeURIComponent(state.readerId)}/process_payment_intent`, {
      payment_intent: intent.id,
    });
    $('prompt-text').textContent = `Present the card on the reader: ${money(amount, 'usd')}`;
    $('prompt').hidden = false;
  } catch (err) {
    showResult(`Could not start the payment: ${err.message}`, 'bad');
    $('charge').disabled = false;
  }
}

async function present() {
  try {
    const path = `/v1/test_helpers/terminal/readers/${encodeURIComponent(state.readerId)}/present_payment_method`;
    await api('POST', path, { card_present: { number: $('test-card').value } });
    $('prompt-text').textContent = 'Card read — authorising…';
  } catch (err) {
    showResult(`Reader: ${err.message}`, 'bad');
  }
}

async function cancel() {
  try {
    await api('POST', `/v1/terminal/readers/${encodeURIComponent(state.readerId)}/cancel_action`, {});
  } catch (err) {
    showResult(`Cannot cancel: ${err.message}`, 'bad');
  }
}

$('settings-form').addEventListener('submit', connect);
$('pay-form').addEventListener('submit', charge);
$('present').addEventListener('click', present);
$('cancel').addEventListener('click', cancel);
$('service-url').value = localStorage.getItem('offterm-pos-url') || $('service-url').value;
