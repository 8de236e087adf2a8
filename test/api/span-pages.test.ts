/**
 * The query of `GET /spans` (limit, cursor, filters) and its answers' shape: bad input is
 * a ValidationError (a 400 with the message), a cursor round-trips, and a page and a
 * summary as the API builds them match api/openapi.json.
 */
import { describe, expect, it } from 'vitest';
import { decodeSpanCursor, encodeSpanCursor, parseSpansPageQuery, spansPageDefaults } from '../../src/api/span-pages.ts';
import { ValidationError } from '../../src/server/changefeed-info.ts';
import { checkAgainstOpenApi } from '../integration/openapi-check.ts';

const q = (text: string): URLSearchParams => new URLSearchParams(text);

describe('span pages', () => {
  it('defaults, bounds and filters', () => {
    expect(parseSpansPageQuery(q(''))).toEqual({ limit: 1_000, after: undefined, table: undefined, capture: undefined, state: undefined });
    expect(parseSpansPageQuery(q('limit=10000&table=t&capture=c1&state=replicating'))).toMatchObject({ limit: 10_000, table: 't', capture: 'c1', state: 'replicating' });
    expect(parseSpansPageQuery(q('limit=50'), { ...spansPageDefaults, limitMax: 50 }).limit).toBe(50);
    const bad: [string, RegExp][] = [
      ['limit=0', /limit="0" must be an integer from 1 to 10000/],
      ['limit=10001', /from 1 to 10000/],
      ['limit=1.5', /must be an integer/],
      ['limit=', /must be an integer/],
      ['state=running', /state="running" must be one of absent, prepare, commit, replicating, removing/],
      ['cursor=***', /is not a cursor this API gave/],
      [`cursor=${Buffer.from('[1,2,3]').toString('base64url')}`, /is not a cursor/],
      [`cursor=${Buffer.from('{').toString('base64url')}`, /is not a cursor/],
      ['sort=asc', /unknown query parameter "sort"/],
      ['limit=1&limit=2', /given more than once/],
    ];
    for (const [text, message] of bad) {
      expect(() => parseSpansPageQuery(q(text)), text).toThrow(ValidationError);
      expect(() => parseSpansPageQuery(q(text)), text).toThrow(message);
    }
  });

  it('cursors round-trip any span, binary keys included', () => {
    for (const span of [{ table: 't', start: '', end: '' }, { table: 'a/b', start: '\u0000\u00ff', end: 'é\u0001' }]) {
      const cursor = encodeSpanCursor(span);
      expect(cursor).toMatch(/^[A-Za-z0-9_-]+$/);
      expect(decodeSpanCursor(cursor)).toEqual(span);
      expect(parseSpansPageQuery(q(`cursor=${cursor}`)).after).toEqual(span);
    }
  });

  it('a page and a summary match the OpenAPI document', () => {
    const span = { table: 't', start: '', end: 'm', state: 'replicating', primary: 'c1', secondaries: [], checkpointTs: '5', resolvedTs: '6', backfill: null };
    expect(checkAgainstOpenApi('GET', '/api/v1/changefeeds/cf/spans?limit=1', 200, { spans: [span], nextCursor: encodeSpanCursor(span) })).toBe('GET /api/v1/changefeeds/{id}/spans 200');
    expect(checkAgainstOpenApi('GET', '/api/v1/changefeeds/cf/spans', 200, { spans: [], nextCursor: null })).toBe('GET /api/v1/changefeeds/{id}/spans 200');
    expect(() => checkAgainstOpenApi('GET', '/api/v1/changefeeds/cf/spans', 200, [span])).toThrow(/must be object/);
    const counts = { absent: 1, prepare: 0, commit: 0, replicating: 2, removing: 0 };
    const summary = { spans: 3, byState: counts, tables: [{ table: 't', spans: 3, byState: counts }], captures: [{ captureId: null, spans: 1, byState: { ...counts, replicating: 0 } }, { captureId: 'c1', spans: 2, byState: { ...counts, absent: 0 } }] };
    expect(checkAgainstOpenApi('GET', '/api/v1/changefeeds/cf/spans/summary', 200, summary)).toBe('GET /api/v1/changefeeds/{id}/spans/summary 200');
    expect(checkAgainstOpenApi('GET', '/api/v1/changefeeds/cf/spans/summary', 200, { spans: 0, byState: null, tables: [], captures: [] })).toBe('GET /api/v1/changefeeds/{id}/spans/summary 200');
  });
});
