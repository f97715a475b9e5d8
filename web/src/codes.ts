// Numeric codes from PROTOCOL.md: `Error.code` / `Unsubscribed.code`, and `Goodbye.code`.
// Codes are only ever appended, so an unknown one is shown by number.

export const ErrorCode = {
  internal: 100,
  bad_request: 101,
  invalid_room: 102,
  permission_denied: 103,
  already_subscribed: 104,
  not_subscribed: 105,
  too_many_subscriptions: 106,
  rate_limited: 107,
  invalid_token: 108,
  payload_too_large: 109,
  unknown_command: 110,
  unavailable: 111,
  slow_consumer: 112,
  session_closing: 113,
  stream_limit: 114,
  quota_exceeded: 115,
  unsubscribed: 116,
  unrecoverable_position: 117,
  deadline_exceeded: 118,
  backend_error: 119,
  stream_stopped: 120,
} as const;

export const CloseCode = {
  shutdown: 3000,
  protocol_error: 3001,
  token_expired: 3002,
  rate_abuse: 3003,
  unsupported_version: 3004,
  server_error: 3005,
  hello_timeout: 3006,
  token_invalid: 3007,
  over_quota: 3008,
  disconnected: 3009,
  not_reading: 3010,
  reconnect: 3011,
} as const;

const labels = new Map<number, string>(
  [...Object.entries(ErrorCode), ...Object.entries(CloseCode)].map(([label, code]) => [code, label]),
);

/** The snake_case label of an error or close code, e.g. `permission_denied`; `code_N` if unknown. */
export function codeLabel(code: number): string {
  return labels.get(code) ?? `code_${code}`;
}
