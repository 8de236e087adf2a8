/**
 * Checks real API answers against `api/openapi.json`: the response schema of the
 * matching path, method and status must accept the body.
 */
import { readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { ValidateFunction } from 'ajv/dist/2020.js';
import type { ApiAnswer, LocalCapture } from '../../src/dev/local-cluster.ts';
import { api } from '../../src/dev/local-cluster.ts';

interface Doc {
  paths: Record<string, Record<string, { responses?: Record<string, { content?: Record<string, { schema: unknown }> }> }>>;
}

const doc = JSON.parse(readFileSync(new URL('../../api/openapi.json', import.meta.url), 'utf8')) as Doc;
const ajv = new Ajv2020({ strict: false, allErrors: true });
ajv.addSchema(doc as object, 'openapi.json');
const compiled = new Map<string, ValidateFunction>();
const templates = Object.keys(doc.paths).map((template) => ({
  template,
  pattern: new RegExp(`^${template.replace(/\{[^}]+\}/g, '[^/]+')}$`),
}));

/** Throws when `body` does not conform to the documented answer; returns what was checked. */
export function checkAgainstOpenApi(method: string, path: string, status: number, body: unknown): string {
  const pathname = path.split('?')[0] ?? path;
  const match = templates.find((t) => t.pattern.test(pathname));
  if (match === undefined) {
    // An unknown endpoint: a 404 with the documented error body.
    if (status !== 404) throw new Error(`${method} ${pathname} is not in the OpenAPI document and answered ${status}`);
    return checkSchema(`${method} (unknown) 404`, { $ref: '#/components/schemas/Error' }, body);
  }
  const operation = doc.paths[match.template]?.[method.toLowerCase()];
  if (operation === undefined) return 'method not documented (405)';
  const response = operation.responses?.[String(status)];
  if (response === undefined) throw new Error(`${method} ${match.template} answered ${status}, which the OpenAPI document does not list`);
  const schema = response.content?.['application/json']?.schema;
  if (schema === undefined) return 'no JSON schema';
  return checkSchema(`${method} ${match.template} ${status}`, schema, body);
}

function checkSchema(key: string, schema: unknown, body: unknown): string {
  let validate = compiled.get(key);
  if (validate === undefined) {
    validate = ajv.compile(JSON.parse(JSON.stringify(schema).replaceAll('"#/components', '"openapi.json#/components')) as object);
    compiled.set(key, validate);
  }
  if (!validate(body)) throw new Error(`${key}: ${ajv.errorsText(validate.errors)} in ${JSON.stringify(body).slice(0, 500)}`);
  return key;
}

/**
 * Calls the API through the first running capture that answers something other than 503
 * (non-owners forward to the owner), checking every answer against the document; the
 * (method, path, status) checked go into `checked` when given.
 */
export async function callChecked<T = any>(captures: readonly LocalCapture[], method: string, path: string, body?: unknown, checked?: Set<string>): Promise<ApiAnswer<T>> {
  let last: ApiAnswer<T> | undefined;
  for (const capture of captures) {
    if (!capture.proc.running) continue;
    try {
      last = await api<T>(capture.url, method, path, body);
    } catch {
      // Paused or dying: try the next one.
      continue;
    }
    checked?.add(checkAgainstOpenApi(method, path, last.status, last.body));
    if (last.status !== 503) return last;
  }
  if (last === undefined) throw new Error('no capture answered');
  return last;
}

/** One operation of the OpenAPI document with a concrete path, and a body an admin may send. */
export interface DocumentedOperation {
  readonly method: string;
  readonly template: string;
  readonly path: string;
  readonly body?: unknown;
}

/**
 * Every operation of the OpenAPI document, aimed at changefeed `cf` (removes and drains
 * at things that do not exist, so their answer is the normal 404); the owner's resign
 * goes last, as it moves the owner.
 */
export function documentedOperations(): DocumentedOperation[] {
  const bodies: Record<string, unknown> = {
    'POST /api/v1/changefeeds': { id: 'cf2', source: { uri: 'datagen://?rate=5' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't', spans: 2 }] },
    'PUT /api/v1/changefeeds/{id}': { tables: [{ name: 't', spans: 4 }] },
    'POST /api/v1/changefeeds/{id}/spans/move': { table: 't', start: '', captureId: 'nope' },
    'POST /api/v1/changefeeds/{id}/spans/split': { table: 't', start: 'nope/' },
    'POST /api/v1/changefeeds/{id}/spans/merge': { table: 't', start: 'nope/' },
  };
  const list: DocumentedOperation[] = [];
  for (const [template, item] of Object.entries(doc.paths)) {
    for (const method of Object.keys(item)) {
      if (!['get', 'post', 'put', 'delete'].includes(method)) continue;
      const upper = method.toUpperCase();
      const id = template.startsWith('/api/v1/captures') ? 'nope' : upper === 'DELETE' ? 'nope' : 'cf';
      const path = template.replace('{id}', id);
      const body = bodies[`${upper} ${template}`];
      list.push({ method: upper, template, path, ...(body === undefined ? {} : { body }) });
    }
  }
  list.sort((a, b) => Number(a.path === '/api/v1/owner/resign') - Number(b.path === '/api/v1/owner/resign'));
  return list;
}
