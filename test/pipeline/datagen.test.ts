/**
 * The datagen source's rates: per span, over the whole changefeed (spread over its
 * spans, by the `spans` hint or the span count the capture opens it with), and idle.
 */
import { describe, expect, it } from 'vitest';
import { DatagenSource, datagenPeriodMs, datagenTableScanEventsMax, parseDatagenUri, zipfCdf } from '../../src/pipeline/sources/datagen.ts';
import { BadUriError } from '../../src/pipeline/uri.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKeyHashes } from '../../src/core/span-digest.ts';
import type { ChangeEvent, ReadResult } from '../../src/pipeline/source.ts';

const span: Span = { table: 't', start: 'a', end: 'b' };

async function count(source: DatagenSource, windowMs: bigint, limit = 1_000_000): Promise<number> {
  return (await source.read(span, 1_000_000n, 1_000_000n + windowMs, limit)).events.length;
}

describe('datagen rates', () => {
  it('parses rate, totalRate and spans, and refuses what makes no sense', () => {
    expect(parseDatagenUri('datagen://')).toEqual({ rate: 1, keys: 100, seed: 1 });
    expect(parseDatagenUri('datagen://?rate=0')).toEqual({ rate: 0, keys: 100, seed: 1 });
    expect(parseDatagenUri('datagen://?totalRate=10000&spans=1000000')).toEqual({ rate: 1, totalRate: 10_000, spans: 1_000_000, keys: 100, seed: 1 });
    const bad: [string, RegExp][] = [
      ['datagen://?rate=1001', /rate="1001" must be an integer from 0 to 1000/],
      ['datagen://?rate=-1', /must be an integer/],
      ['datagen://?totalRate=1.5', /totalRate="1.5" must be an integer from 0 to 10000000/],
      ['datagen://?totalRate=10&rate=1', /not both/],
      ['datagen://?spans=10', /only with totalRate/],
      ['datagen://?totalRate=10&spans=0', /spans="0" must be an integer from 1 to 1000000/],
      ['datagen://?totalrate=10', /parameter "totalrate" is not known/],
    ];
    for (const [uri, message] of bad) {
      expect(() => parseDatagenUri(uri), uri).toThrow(BadUriError);
      expect(() => parseDatagenUri(uri), uri).toThrow(message);
    }
  });

  it('spreads totalRate over the spans: the hint first, else the changefeed span count', () => {
    // 10,000 events/s over 1,000,000 spans: one event per span every 100 s.
    expect(datagenPeriodMs(parseDatagenUri('datagen://?totalRate=10000&spans=1000000'))).toBe(100_000n);
    expect(datagenPeriodMs(parseDatagenUri('datagen://?totalRate=10000'), { spanCount: 1_000_000 })).toBe(100_000n);
    expect(datagenPeriodMs(parseDatagenUri('datagen://?totalRate=10000&spans=10'), { spanCount: 1_000_000 })).toBe(1n);
    // A share above 1000 events/s is capped at one per ms.
    expect(datagenPeriodMs(parseDatagenUri('datagen://?totalRate=100000'), { spanCount: 2 })).toBe(1n);
    expect(datagenPeriodMs(parseDatagenUri('datagen://?totalRate=100'))).toBe(10n);
    expect(datagenPeriodMs(parseDatagenUri('datagen://?rate=20'))).toBe(50n);
    expect(datagenPeriodMs(parseDatagenUri('datagen://?totalRate=0'), { spanCount: 5 })).toBeUndefined();
    expect(datagenPeriodMs(parseDatagenUri('datagen://?rate=0'))).toBeUndefined();
  });

  it('makes the share of events per span, and the total over all spans is totalRate', async () => {
    const spans = 40;
    const source = new DatagenSource(parseDatagenUri('datagen://?totalRate=400'), { spanCount: spans });
    // 10 events/s per span: 100 in 10 s, and 4,000 over all spans.
    expect(await count(source, 10_000n)).toBe(100);
    let total = 0;
    for (let i = 0; i < spans; i++) total += (await source.read({ table: 't', start: `k${i}`, end: `k${i + 1}` }, 1_000_000n, 1_010_000n, 1_000_000)).events.length;
    expect(total).toBe(4_000);
  });

  it('idle spans make no events but read up to the bound, and the resolved-ts follows the clock', async () => {
    for (const uri of ['datagen://?rate=0', 'datagen://?totalRate=0']) {
      const source = new DatagenSource(parseDatagenUri(uri), { spanCount: 3 });
      expect(await source.read(span, 10n, 1_000_000n, 5)).toEqual({ events: [], readUpToTs: 1_000_000n });
      const before = BigInt(Date.now());
      expect(await source.resolvedTs()).toBeGreaterThanOrEqual(before - 1n);
    }
  });

  it('is the same history for a span whichever window reads it', async () => {
    const source = new DatagenSource(parseDatagenUri('datagen://?totalRate=30&spans=3&seed=4'));
    const whole = (await source.read(span, 0n, 20_000n, 1_000_000)).events;
    const parts = [...(await source.read(span, 0n, 7_777n, 1_000_000)).events, ...(await source.read(span, 7_777n, 20_000n, 1_000_000)).events];
    expect(parts).toEqual(whole);
    expect(whole.length).toBe(200);
  });
});

/**
 * The log as datagen first made it, one bigint and one whole-text hash per event: the
 * number loop must make exactly these events (the verifier and every capture replay
 * datagen, so a changed event would be a different log).
 */
function referenceRead(seed: number, keys: number, periodMs: bigint, span: Span, afterTs: bigint, uptoTs: bigint, limit: number): ReadResult {
  const events: ChangeEvent[] = [];
  if (uptoTs <= afterTs) return { events, readUpToTs: afterTs };
  const identity = `${seed}\u0000${span.table}\u0000${span.start}\u0000${span.end}`;
  const offset = BigInt(spanKeyHashes(identity)[0]) % periodMs;
  let ts = afterTs + 1n;
  const rem = (((ts - offset) % periodMs) + periodMs) % periodMs;
  if (rem !== 0n) ts += periodMs - rem;
  for (; ts <= uptoTs; ts += periodMs) {
    if (events.length >= limit) return { events, readUpToTs: ts - 1n };
    const [a, b] = spanKeyHashes(`${identity}\u0000${ts}`);
    const key = `${span.start}\u0000${(a % keys).toString(36).padStart(6, '0')}`;
    events.push(b % 10 === 0 ? { table: span.table, key, op: 'delete', ts } : { table: span.table, key, value: `v${b.toString(36)}`, op: 'put', ts });
  }
  return { events, readUpToTs: uptoTs };
}

describe('datagen log', () => {
  it('is the same log as the bigint loop made, for any rate, window and limit', async () => {
    const spans: Span[] = [span, { table: 'orders', start: 'orders/0001', end: 'orders/0002' }, { table: 'x', start: '', end: '' }];
    const now = 1_796_220_861_941n;
    for (const rate of [1000, 333, 7, 1]) {
      const options = parseDatagenUri(`datagen://?rate=${rate}&keys=100000&seed=5`);
      const source = new DatagenSource(options);
      const periodMs = datagenPeriodMs(options) as bigint;
      for (const s of spans) {
        for (const [afterTs, uptoTs, limit] of [
          [now, now + 10_000n, 1_000_000],
          [now - 1n, now + 5_000n, 100],
          [now + 3n, now + 4n, 10],
          [0n, 20_000n, 1_000],
          [now, now, 5],
          [now + 10n, now, 5],
        ] as const) {
          expect(await source.read(s, afterTs, uptoTs, limit), `rate ${rate} ${s.table} (${afterTs}, ${uptoTs}] limit ${limit}`).toEqual(referenceRead(5, 100_000, periodMs, s, afterTs, uptoTs, limit));
        }
      }
    }
  });

  it('stops at 2^53 ms, past which its numbers would lose whole ms', async () => {
    const source = new DatagenSource(parseDatagenUri('datagen://?rate=1000'));
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    const result = await source.read(span, max - 5n, max + 1_000n, 1_000);
    expect(result.events.map((e) => e.ts)).toEqual([max - 4n, max - 3n, max - 2n, max - 1n, max]);
    expect(result.readUpToTs).toBe(max);
    expect(await source.read(span, max, max + 10n, 1_000)).toEqual({ events: [], readUpToTs: max });
  });
});

describe('datagen table mode', () => {
  const whole: Span = { table: 'orders', start: 'orders/', end: 'orders0' };

  it('parses tableRate, keys, dist and zipfS, and refuses what makes no sense', () => {
    expect(parseDatagenUri('datagen://?tableRate=500&keys=1000&dist=zipf&zipfS=1.2')).toEqual({ rate: 0, keys: 1000, seed: 1, table: { rate: 500, dist: 'zipf', zipfS: 1.2 } });
    expect(parseDatagenUri('datagen://?tableRate=10')).toEqual({ rate: 0, keys: 100, seed: 1, table: { rate: 10, dist: 'uniform', zipfS: 0 } });
    expect(parseDatagenUri('datagen://?tableRate=10&dist=zipf').table?.zipfS).toBe(1);
    const bad: [string, RegExp][] = [
      ['datagen://?tableRate=0', /tableRate="0" must be an integer from 1 to 1000/],
      ['datagen://?tableRate=1001', /must be an integer from 1 to 1000/],
      ['datagen://?tableRate=10&rate=5', /tableRate .* and rate do not go together/],
      ['datagen://?tableRate=10&totalRate=5', /and totalRate do not go together/],
      ['datagen://?tableRate=10&dist=pareto', /dist="pareto" must be uniform or zipf/],
      ['datagen://?tableRate=10&zipfS=1', /zipfS goes only with dist=zipf/],
      ['datagen://?tableRate=10&dist=zipf&zipfS=0', /zipfS="0" must be above 0/],
      ['datagen://?tableRate=10&dist=zipf&zipfS=9', /zipfS="9" must be a number from 0 to 5/],
      ['datagen://?tableRate=10&dist=zipf&zipfS=-1', /must be a number/],
      ['datagen://?dist=zipf', /give them with tableRate/],
      ['datagen://?tableRate=10&keys=0', /keys="0" must be an integer/],
    ];
    for (const [uri, message] of bad) {
      expect(() => parseDatagenUri(uri), uri).toThrow(BadUriError);
      expect(() => parseDatagenUri(uri), uri).toThrow(message);
    }
  });

  it('makes one deterministic stream per table, every 1000/tableRate ms, with text keys that sort by index', async () => {
    const uri = 'datagen://?tableRate=200&keys=1000&dist=zipf&seed=3';
    const a = await new DatagenSource(parseDatagenUri(uri)).read(whole, 1_000_000n, 1_010_000n, 1_000_000);
    const b = await new DatagenSource(parseDatagenUri(uri)).read(whole, 1_000_000n, 1_010_000n, 1_000_000);
    expect(a).toEqual(b);
    expect(a.events.length).toBe(2_000);
    expect(a.readUpToTs).toBe(1_010_000n);
    for (let i = 1; i < a.events.length; i++) expect((a.events[i] as ChangeEvent).ts - (a.events[i - 1] as ChangeEvent).ts).toBe(5n);
    for (const event of a.events) expect(event.key).toMatch(/^orders\/\d{3}$/);
    // Another seed, another stream; another table, another stream.
    const other = await new DatagenSource(parseDatagenUri('datagen://?tableRate=200&keys=1000&dist=zipf&seed=4')).read(whole, 1_000_000n, 1_010_000n, 1_000_000);
    expect(other.events.map((e) => e.key)).not.toEqual(a.events.map((e) => e.key));
  });

  it("gives a span exactly the table's stream filtered by its range, and the spans of a tiling share it out", async () => {
    const source = new DatagenSource(parseDatagenUri('datagen://?tableRate=1000&keys=500&dist=zipf&zipfS=0.8&seed=9'));
    const all = (await source.read(whole, 2_000_000n, 2_005_000n, 1_000_000)).events;
    const cuts = ['orders/', 'orders/003', 'orders/040', 'orders/2', 'orders0'];
    let total = 0;
    for (let i = 0; i + 1 < cuts.length; i++) {
      const part: Span = { table: 'orders', start: cuts[i] as string, end: cuts[i + 1] as string };
      const events = (await source.read(part, 2_000_000n, 2_005_000n, 1_000_000)).events;
      expect(events).toEqual(all.filter((e) => e.key >= part.start && e.key < part.end));
      total += events.length;
    }
    expect(total).toBe(all.length);
    // Paged reads (by limit) are the same stream, and each page ends just before the next event.
    const part: Span = { table: 'orders', start: 'orders/003', end: 'orders/2' };
    const paged: ChangeEvent[] = [];
    let after = 2_000_000n;
    for (let pages = 0; after < 2_005_000n; pages++) {
      expect(pages).toBeLessThan(100);
      const result: ReadResult = await source.read(part, after, 2_005_000n, 37);
      expect(result.events.length).toBeLessThanOrEqual(37);
      paged.push(...result.events);
      after = result.readUpToTs;
    }
    expect(paged).toEqual(all.filter((e) => e.key >= part.start && e.key < part.end));
  });

  it('bounds the table events one read scans', async () => {
    const source = new DatagenSource(parseDatagenUri('datagen://?tableRate=1000&keys=10'));
    // A span no key falls in: the read stops after the scan bound, having found nothing.
    const empty: Span = { table: 'orders', start: 'orders/x', end: 'orders/y' };
    const result = await source.read(empty, 0n, BigInt(datagenTableScanEventsMax) * 3n, 1_000);
    expect(result.events).toEqual([]);
    expect(result.readUpToTs).toBeLessThan(BigInt(datagenTableScanEventsMax) + 2n);
    expect(result.readUpToTs).toBeGreaterThan(BigInt(datagenTableScanEventsMax) - 2n);
  });

  it('concentrates zipf traffic on the first keys; uniform spreads it', async () => {
    const share = async (uri: string): Promise<number> => {
      const events = (await new DatagenSource(parseDatagenUri(uri)).read(whole, 3_000_000n, 3_020_000n, 1_000_000)).events;
      const counts = new Map<string, number>();
      for (const e of events) counts.set(e.key, (counts.get(e.key) ?? 0) + 1);
      return Math.max(...counts.values()) / events.length;
    };
    const zipf = await share('datagen://?tableRate=1000&keys=1000&dist=zipf&zipfS=1');
    // The top key of zipf(1) over 1,000 keys takes 1/H(1000) = 13.4% of the traffic.
    expect(zipf).toBeGreaterThan(0.11);
    expect(zipf).toBeLessThan(0.16);
    const zipfTop = (await new DatagenSource(parseDatagenUri('datagen://?tableRate=1000&keys=1000&dist=zipf&zipfS=1')).read({ table: 'orders', start: 'orders/', end: 'orders/010' }, 3_000_000n, 3_020_000n, 1_000_000)).events.length;
    // The first 10 keys: H(10)/H(1000) = 39%.
    expect(zipfTop / 20_000).toBeGreaterThan(0.35);
    expect(zipfTop / 20_000).toBeLessThan(0.43);
    const uniform = await share('datagen://?tableRate=1000&keys=1000');
    expect(uniform).toBeLessThan(0.003);
    expect(zipfCdf(4, 1)[3]).toBe(1);
    expect(zipfCdf(4, 1)[0]).toBeCloseTo(12 / 25, 10);
  });

  it('answers quiet checks with the first event of the span after afterTs, as read finds it', async () => {
    const source = new DatagenSource(parseDatagenUri('datagen://?tableRate=100&keys=100&dist=zipf&seed=2'));
    const spans: Span[] = [
      { table: 'orders', start: 'orders/', end: 'orders/01' },
      { table: 'orders', start: 'orders/05', end: 'orders/06' },
      { table: 'orders', start: 'orders/099', end: 'orders0' },
      { table: 'orders', start: 'orders/x', end: '' },
    ];
    const base = BigInt(Date.now()) - 60_000n;
    for (const span of spans) {
      for (const afterTs of [base, base + 7n, base + 1_234n]) {
        const [answer] = await source.quietUpTo([{ span, afterTs }]);
        const read = await source.read(span, afterTs, base + 50_000n, 1);
        const first = read.events[0];
        if (first === undefined) {
          expect(answer?.needsStep).toBe(false);
        } else {
          expect(answer).toEqual({ quietTs: first.ts - 1n, needsStep: true });
          // Nothing of the span in (afterTs, quietTs].
          expect((await source.read(span, afterTs, first.ts - 1n, 1_000)).events).toEqual([]);
        }
      }
    }
  });
});
