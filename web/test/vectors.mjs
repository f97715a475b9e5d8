// Loads proto/vectors/frames.json (the Rust reference's test vectors) into this client's types.
// The file is read at test time so a protocol change in proto/ shows up here at once.
import { readFileSync } from 'node:fs';

const VECTORS = new URL('../../proto/vectors/frames.json', import.meta.url);
const U64_FIELDS = new Set(['epoch', 'offset', 'expires_at', 'subscription', 'sequence']);
const BIG = '#u64:';

export function loadVectors() {
  const text = readFileSync(VECTORS, 'utf8');
  // JSON.parse rounds integers above 2^53; quote long ones first so they reach BigInt intact.
  const exact = text.replace(/([:[,]\s*)(\d{16,})(?=\s*[,\]}])/g, `$1"${BIG}$2"`);
  return JSON.parse(exact).map((v) => ({
    name: v.name,
    direction: v.direction,
    bytes: new Uint8Array(Buffer.from(v.hex, 'hex')),
    frame:
      v.direction === 'command'
        ? { id: v.frame.id, command: fromSerde(v.frame.command) }
        : { id: v.frame.id, event: fromSerde(v.frame.event) },
  }));
}

/** serde's externally tagged enum (`"Ping"` or `{"Hello": {...}}`) to `{type, ...fields}`. */
function fromSerde(tagged) {
  if (typeof tagged === 'string') return { type: tagged };
  const [[type, fields]] = Object.entries(tagged);
  return { type, ...fieldsFromSerde(fields) };
}

function fieldsFromSerde(fields) {
  const out = {};
  for (const [key, value] of Object.entries(fields)) {
    out[key.replace(/_(.)/g, (_, c) => c.toUpperCase())] = valueFromSerde(key, value);
  }
  return out;
}

function valueFromSerde(key, value) {
  if (value === null) return null;
  if (U64_FIELDS.has(key)) return BigInt(String(value).replace(BIG, ''));
  if (key === 'payload') return Uint8Array.from(value);
  if (key === 'recovery') return fromSerde(value);
  if (Array.isArray(value)) return value.map((v) => valueFromSerde(key, v));
  if (typeof value === 'object') return fieldsFromSerde(value);
  return value;
}

const DATAGRAMS = new URL('../../proto/vectors/datagrams.json', import.meta.url);

/** proto/vectors/datagrams.json: the `latest` lane's datagrams, `bytes` without the quarter
 *  stream id (what the client's codec reads and writes; the transport adds the id). */
export function loadDatagramVectors() {
  const text = readFileSync(DATAGRAMS, 'utf8');
  const exact = text.replace(/([:[,]\s*)(\d{16,})(?=\s*[,\]}])/g, `$1"${BIG}$2"`);
  return JSON.parse(exact).map((v) => ({
    ...v,
    subscription: v.subscription === undefined ? undefined : BigInt(String(v.subscription).replace(BIG, '')),
    sequence: v.sequence === undefined ? undefined : BigInt(String(v.sequence).replace(BIG, '')),
    payload: Uint8Array.from(v.payload),
    bytes: new Uint8Array(Buffer.from(v.hex, 'hex')),
  }));
}
