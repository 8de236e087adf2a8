/**
 * The request-body schemas compiled from `api/openapi.json`: every operation with a body
 * has one, bad bodies are refused with ajv's reasons, and no body the handlers' own
 * validation accepts is refused by a schema (the schemas may be stricter only where the
 * handlers refuse too).
 */
import { describe, expect, it } from 'vitest';
import { openApiDocument } from '../../src/api/http-api.ts';
import { compileRequestSchemas } from '../../src/api/request-schemas.ts';
import type { RequestSchema } from '../../src/api/request-schemas.ts';
import { SeededRandom } from '../../src/core/rng.ts';
import { update as decideUpdate } from '../../src/core/changefeed-lifecycle.ts';
import { ValidationError, parseCreateRequest, parseTables, parseUpdateRequest } from '../../src/server/changefeed-info.ts';
import { checkAgainstOpenApi } from '../integration/openapi-check.ts';

const schemas = compileRequestSchemas(openApiDocument());

function schema(key: string): RequestSchema {
  const found = schemas.get(key);
  if (found === undefined) throw new Error(`no request schema for ${key}`);
  return found;
}

const create = schema('POST /api/v1/changefeeds');
const update = schema('PUT /api/v1/changefeeds/{}');
const valid = { id: 'cf', source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }] };

describe('request schemas from the OpenAPI document', () => {
  it('has a JSON schema for every operation with a request body, and only those', () => {
    const doc = openApiDocument() as { paths: Record<string, Record<string, { requestBody?: { content?: Record<string, { schema?: unknown }> } }>> };
    const withBody: string[] = [];
    for (const [template, item] of Object.entries(doc.paths)) {
      for (const [method, operation] of Object.entries(item)) {
        if (method === 'parameters' || operation.requestBody === undefined) continue;
        expect(operation.requestBody.content?.['application/json']?.schema, `${method} ${template}`).toBeDefined();
        withBody.push(`${method.toUpperCase()} ${template.replace('{id}', '{}')}`);
      }
    }
    // The handlers that read a body: create, update, pause, resume, move, split, merge.
    expect([...schemas.keys()].sort()).toEqual(
      [
        'POST /api/v1/changefeeds',
        'PUT /api/v1/changefeeds/{}',
        'POST /api/v1/changefeeds/{}/pause',
        'POST /api/v1/changefeeds/{}/resume',
        'POST /api/v1/changefeeds/{}/spans/move',
        'POST /api/v1/changefeeds/{}/spans/split',
        'POST /api/v1/changefeeds/{}/spans/merge',
      ].sort(),
    );
    expect(withBody.sort()).toEqual([...schemas.keys()].sort());
    expect(create.required).toBe(true);
    expect(schema('POST /api/v1/changefeeds/{}/pause').required).toBe(false);
  });

  it('refuses bad bodies with a readable reason', () => {
    expect(create.check(valid)).toBeUndefined();
    expect(create.check({ ...valid, tables: [{ name: 5 }] })).toBe('/tables/0/name must be string');
    expect(create.check({ ...valid, extra: 1 })).toBe('the body must not have the field "extra"');
    expect(create.check({ ...valid, tables: [] })).toBe('/tables must NOT have fewer than 1 items');
    expect(create.check({ ...valid, start: 'yesterday' })).toContain('/start must match pattern');
    expect(create.check({ ...valid, id: 'bad id!' })).toContain('/id must match pattern');
    expect(create.check({ ...valid, source: { uri: '' } })).toBe('/source/uri must NOT have fewer than 1 characters');
    expect(create.check({ id: 'cf' })).toContain("the body must have required property 'source'");
    expect(create.check({ ...valid, autoSplit: true })).toBeUndefined();
    expect(create.check({ ...valid, autoSplit: 'yes' })).toBe('/autoSplit must be boolean');
    expect(() => parseCreateRequest({ ...valid, autoSplit: 'yes' })).toThrow('autoSplit must be true or false');
    expect(parseCreateRequest({ ...valid, autoSplit: true }).autoSplit).toBe(true);
    expect(parseCreateRequest(valid).autoSplit).toBe(false);
    // A request may not set what only the owner sets.
    expect(update.check({ tables: [{ name: 't', backfillTs: '5' }] })).toBe('/tables/0 must not have the field "backfillTs"');
    expect(update.check({ tables: [{ name: 't', spans: 0 }] })).toBe('/tables/0/spans must be >= 1');
    // An update turns the split policy on or off, alone or with tables; it must ask for one of them.
    expect(update.check({ autoSplit: false })).toBeUndefined();
    expect(update.check({ autoSplit: true, tables: [{ name: 't' }], backfill: true })).toBeUndefined();
    expect(update.check({ autoSplit: 'no' })).toBe('/autoSplit must be boolean');
    expect(update.check({})).toContain("the body must have required property 'tables'");
    expect(update.check({})).toContain("the body must have required property 'autoSplit'");
    expect(update.check({ backfill: true, autoSplit: true })).toContain('the body must have property tables when property backfill is present');
    // The handler's own rules say the same.
    expect(() => parseUpdateRequest({ autoSplit: 'no' })).toThrow('autoSplit must be true or false');
    expect(() => parseUpdateRequest({ autoSplit: true, backfill: false })).toThrow('backfill goes with "tables"');
    expect(() => parseUpdateRequest({ autoSplit: true, spans: 3 })).toThrow('unknown field "spans"');
    expect(parseUpdateRequest({ autoSplit: false })).toEqual({ backfill: false, autoSplit: false });
    expect(parseUpdateRequest({})).toEqual({ backfill: false });
    expect(schema('POST /api/v1/changefeeds/{}/pause').check({ x: 1 })).toBe('the body must not have the field "x"');
    const resume = schema('POST /api/v1/changefeeds/{}/resume');
    expect(resume.check({ backfill: 'yes' })).toContain('/backfill must be boolean');
    expect(resume.check({ backfill: { sinceTs: 'x' } })).toContain('/backfill/sinceTs must match pattern');
    expect(resume.check({ backfill: { since: '5' } })).toContain('/backfill must not have the field "since"');
    expect(resume.check({ backfill: { sinceTs: '5' } })).toBeUndefined();
    expect(schema('POST /api/v1/changefeeds/{}/spans/move').check({ table: 1, start: '' })).toBe("the body must have required property 'captureId'; /table must be string");
    const split = schema('POST /api/v1/changefeeds/{}/spans/split');
    expect(split.check({ table: 'orders', start: '' })).toBeUndefined();
    expect(split.check({ table: 'orders', start: 'orders/', at: 'orders/5' })).toBeUndefined();
    expect(split.check({ table: 'orders', start: 'orders/', at: '' })).toBe('/at must NOT have fewer than 1 characters');
    expect(split.check({ table: 'orders' })).toBe("the body must have required property 'start'");
    const merge = schema('POST /api/v1/changefeeds/{}/spans/merge');
    expect(merge.check({ table: 'orders', start: 'orders/' })).toBeUndefined();
    expect(merge.check({ table: 'orders', start: 'orders/', at: 'x' })).toBe('the body must not have the field "at"');
    // A long list of bad tables makes a short message.
    const many = create.check({ ...valid, tables: Array.from({ length: 1_000 }, () => ({ name: 1 })) }) ?? '';
    expect(many).toMatch(/; and 995 more$/);
  });

  it('never refuses a body the handlers accept', () => {
    const rng = new SeededRandom(7);
    const names = ['t', 'u', 'a.b', 'x_1', 'bad name', '', 5];
    const strings = ['', 'a', 'b/', 'z', '\u0000', 'x'.repeat(1_100)];
    const randomTable = (): Record<string, unknown> => {
      const table: Record<string, unknown> = { name: rng.pick(names) };
      if (rng.chance(0.3)) table.prefix = rng.pick(strings);
      if (rng.chance(0.3)) table.start = rng.pick(strings);
      if (rng.chance(0.3)) table.end = rng.pick(strings);
      if (rng.chance(0.4)) table.spans = rng.pick([0, 1, 3, 1.5, 100_000, 100_001, '2']);
      if (rng.chance(0.05)) table.backfillTs = '1';
      return table;
    };
    let accepted = 0;
    let updatesAccepted = 0;
    for (let i = 0; i < 4_000; i++) {
      const body: Record<string, unknown> = {
        id: rng.pick(['cf', 'a-b.c_d', '-x', 'x'.repeat(129), 'x'.repeat(128)]),
        source: { uri: rng.pick(['datagen://', 'datagen://?rate=5', '']) },
        sink: { uri: rng.pick(['blackhole://', 'nope://']) },
        tables: Array.from({ length: 1 + rng.int(3) }, randomTable),
      };
      if (rng.chance(0.5)) body.start = rng.pick(['now', 'earliest', '12', '99999999999999999999', 'soon']);
      if (rng.chance(0.3)) body.targetTs = rng.pick(['100', 'x']);
      if (rng.chance(0.3)) body.backfill = rng.pick([true, false, 'yes']);
      if (rng.chance(0.2)) body.autoSplit = rng.pick([true, false, 'yes', 1]);
      let handlerAccepts = true;
      try {
        parseCreateRequest(body);
      } catch (error) {
        if (!(error instanceof ValidationError)) throw error;
        handlerAccepts = false;
      }
      if (handlerAccepts) {
        accepted++;
        expect(create.check(body), JSON.stringify(body)).toBeUndefined();
      }
      let tablesAccepted = true;
      try {
        parseTables(body.tables);
      } catch (error) {
        if (!(error instanceof ValidationError)) throw error;
        tablesAccepted = false;
      }
      if (tablesAccepted) expect(update.check({ tables: body.tables }), JSON.stringify(body.tables)).toBeUndefined();
      // An update: tables, backfill and autoSplit each there or not; accepted when the
      // shape is valid and the lifecycle finds something asked.
      const updateBody: Record<string, unknown> = {};
      if (rng.chance(0.6)) updateBody.tables = body.tables;
      if (body.backfill !== undefined) updateBody.backfill = body.backfill;
      if (body.autoSplit !== undefined) updateBody.autoSplit = body.autoSplit;
      let updateAccepted = true;
      try {
        const parsed = parseUpdateRequest(updateBody);
        const view = { state: 'normal' as const, epoch: 1n, tables: [] };
        updateAccepted = decideUpdate(view, { ...(parsed.tables === undefined ? {} : { tables: parsed.tables.map((t) => ({ name: t.name })) }), ...(parsed.autoSplit === undefined ? {} : { autoSplit: parsed.autoSplit }) }).ok;
      } catch (error) {
        if (!(error instanceof ValidationError)) throw error;
        updateAccepted = false;
      }
      if (updateAccepted) {
        updatesAccepted++;
        expect(update.check(updateBody), JSON.stringify(updateBody)).toBeUndefined();
      }
    }
    // The generator must reach the accepting side often enough to mean something.
    expect(accepted).toBeGreaterThan(50);
    expect(updatesAccepted).toBeGreaterThan(50);
  });

  it('keeps the response checks of openapi-check working', () => {
    expect(checkAgainstOpenApi('POST', '/api/v1/changefeeds', 400, { error: { code: 'invalid', message: '/tables/0/name must be string' } })).toBe('POST /api/v1/changefeeds 400');
    expect(checkAgainstOpenApi('POST', '/api/v1/changefeeds', 413, { error: { code: 'body-too-large', message: 'too large' } })).toBe('POST /api/v1/changefeeds 413');
    expect(checkAgainstOpenApi('GET', '/api/v1/nothing', 404, { error: { code: 'not-found', message: 'no' } })).toBe('GET (unknown) 404');
    expect(() => checkAgainstOpenApi('POST', '/api/v1/changefeeds', 400, { error: { code: 'invalid' } })).toThrow(/message/);
  });
});
