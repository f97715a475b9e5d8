// Orders demo (issue 13): the client sends intent with `call('order.place')`; the application's
// backend (examples/order-backend) answers with the order id and publishes the order's status
// events to the room `order.<id>`, which the page subscribes to. Commands go to the backend,
// events come back through a subscription.
import { QuiverError } from './quiver.js';
import { $, devClient, failed, showError } from './boot.js';

const text = new TextEncoder();
const untext = new TextDecoder();

/** Why a call failed, in words a person can act on. */
function explain(e) {
  if (e instanceof QuiverError && e.kind === 'command') {
    if (e.label === 'unavailable') return 'no order backend is running (see examples/order-backend/README.md)';
    if (e.label === 'bad_request') return `the backend refused the order: ${e.message}`;
    if (e.label === 'deadline_exceeded') return 'the backend did not answer in time';
  }
  return e.message;
}

async function main() {
  const { client, user } = await devClient();
  $('user').textContent = user;

  // For devtools and the browser tests: order id → statuses seen.
  const orders = new Map();
  window.orders = { client, orders };

  $('place').addEventListener('submit', async (event) => {
    event.preventDefault();
    $('submit').disabled = true;
    showError('');
    try {
      const order = { item: $('item').value, qty: Number($('qty').value) };
      // Idempotency key: a retry of this very order (after a lost connection) is the same order.
      const answer = await client.call('order.place', text.encode(JSON.stringify(order)), {
        idempotencyKey: crypto.randomUUID(),
      });
      const { order: id } = JSON.parse(untext.decode(answer));
      const card = document.createElement('article');
      card.className = 'order';
      card.dataset.order = id;
      card.innerHTML = '<h2></h2><ol></ol>';
      card.querySelector('h2').textContent = `${id}: ${order.qty} × ${order.item}`;
      $('list').prepend(card);
      const statuses = [];
      orders.set(id, statuses);
      await client.subscribe(`order.${id}`, (m) => {
        // The backend publishes `{"order": id, "status": "placed" | "packed" | "shipped"}`.
        let status = untext.decode(m.payload);
        try {
          status = JSON.parse(status).status ?? status;
        } catch {
          // Not JSON: show it as it came.
        }
        statuses.push(status);
        const li = document.createElement('li');
        li.textContent = status;
        card.querySelector('ol').append(li);
      });
    } catch (e) {
      showError(explain(e));
    } finally {
      $('submit').disabled = false;
    }
  });
}

main().catch(failed);
