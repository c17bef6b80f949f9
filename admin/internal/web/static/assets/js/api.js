// api.js: calls to the admin and billing APIs. Errors become ApiError with
// the message of the OpenAI-shaped error body, so pages can show it as is.

export class ApiError extends Error {
  constructor(status, message, code = '', type = '') {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.type = type;
  }
}

// request sends one request and returns the Response when it succeeded.
// The token (admin token or API key) goes only into the Authorization
// header; it is never put into a URL, a log or storage here.
export async function request(path, { token = '', method = 'GET', body, accept = 'application/json' } = {}) {
  const headers = { Accept: accept };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (err) {
    throw new ApiError(0, `Cannot reach the server (${err.message}).`);
  }
  if (!res.ok) throw await toError(res);
  return res;
}

// json sends a request and decodes the JSON answer (null for 204).
export async function json(path, opts) {
  const res = await request(path, opts);
  if (res.status === 204) return null;
  return res.json();
}

async function toError(res) {
  let message = `The server answered ${res.status} ${res.statusText}.`;
  let code = '';
  let type = '';
  try {
    const body = await res.json();
    if (body && body.error && typeof body.error.message === 'string') {
      message = body.error.message;
      code = body.error.code || '';
      type = body.error.type || '';
    }
  } catch {
    // Not JSON (a proxy's page): keep the status line.
  }
  const retry = res.headers.get('Retry-After');
  if (res.status === 429 && retry && !message.includes('retry after')) {
    message += ` Retry after ${retry} s.`;
  }
  return new ApiError(res.status, message, code, type);
}
