/**
 * The etcd source's shared watchers, against a real etcd: the spans of a table share one
 * watcher (counted by the source and by etcd itself), spans join a running group ahead
 * of it and behind it (the private catch-up), leave it, overflow without holding their
 * neighbours back, fail on compacted history, and, over a seeded random run of joins,
 * leaves, small reads and a writer, every span gets exactly its events in revision
 * order, checked against a plain watch of the whole table.
 */
import type { IWatchResponse } from 'etcd3';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Span } from '../../src/core/span.ts';
import { LocalEtcd, waitFor } from '../../src/dev/local-cluster.ts';
import type { ChangeEvent, SourceStats } from '../../src/pipeline/source.ts';
import { CompactedError, EtcdSource, parseEtcdSourceUri } from '../../src/pipeline/sources/etcd.ts';

let etcd: LocalEtcd;
let client: Etcd3;

beforeAll(async () => {
  etcd = await LocalEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
});

afterAll(async () => {
  client?.close();
  await etcd?.stop();
});

const FAR = 1n << 62n;

function openSource(params = ''): EtcdSource {
  return new EtcdSource(parseEtcdSourceUri(`etcd://${etcd.endpoint}${params}`));
}

/** Watchers etcd itself counts (every client of this test's etcd). */
async function etcdWatchers(): Promise<number> {
  const text = await (await fetch(`http://${etcd.endpoint}/metrics`)).text();
  const match = /^etcd_debugging_mvcc_watcher_total (\S+)$/m.exec(text);
  if (match === null) throw new Error('etcd has no etcd_debugging_mvcc_watcher_total metric');
  return Number(match[1]);
}

async function etcdWatchersBecome(n: number): Promise<void> {
  await waitFor(`etcd to count ${n} watchers`, async () => ((await etcdWatchers()) === n ? true : undefined), 10_000);
}

async function put(key: string, value = 'v'): Promise<bigint> {
  return BigInt((await client.put(key).value(value)).header.revision);
}

async function del(key: string): Promise<bigint> {
  return BigInt((await client.delete().key(key)).header.revision);
}

function inSpan(span: Span, key: string): boolean {
  return key >= span.start && (span.end === '' || key < span.end);
}

/** Reads a span the way the pipeline runner does: from its position, never overlapping. */
class Reader {
  readonly events: ChangeEvent[] = [];

  constructor(
    readonly source: EtcdSource,
    readonly span: Span,
    public pos: bigint,
  ) {}

  async step(limit = 1_000): Promise<void> {
    const resolved = await this.source.resolvedTs(this.span, this.pos);
    expect(resolved).toBeGreaterThanOrEqual(this.pos);
    const result = await this.source.read(this.span, this.pos, resolved, limit);
    for (const event of result.events) {
      expect(event.ts).toBeGreaterThan(this.pos);
      expect(inSpan(this.span, event.key)).toBe(true);
    }
    this.events.push(...result.events);
    expect(result.readUpToTs).toBeGreaterThanOrEqual(this.pos);
    this.pos = result.readUpToTs;
    this.source.checkInvariants();
  }

  async until(revision: bigint): Promise<void> {
    await waitFor(`${this.span.start} to read up to ${revision}`, async () => {
      await this.step();
      return this.pos >= revision ? true : undefined;
    }, 15_000, 10);
  }
}

/** What a span must have received: the events of `history` in its range after `from`. */
function expected(history: readonly ChangeEvent[], span: Span, from: bigint): string[] {
  return history.filter((e) => e.ts > from && inSpan(span, e.key)).map(show);
}

function show(event: ChangeEvent): string {
  return `${event.ts}:${event.op}:${event.key}`;
}

/** Every event under `prefix` after `from`, as a plain watch of etcd sees them. */
async function recordHistory(prefix: string, from: bigint): Promise<{ events: ChangeEvent[]; stop: () => Promise<void> }> {
  const events: ChangeEvent[] = [];
  const watcher = await client.watch().prefix(prefix).startRevision((from + 1n).toString()).create();
  watcher.on('error', () => undefined);
  watcher.on('data', (response: IWatchResponse) => {
    for (const event of response.events) {
      const key = event.kv.key.toString('latin1');
      const ts = BigInt(event.kv.mod_revision);
      events.push(event.type === 'Delete' ? { table: '', key, op: 'delete', ts } : { table: '', key, value: event.kv.value.toString('latin1'), op: 'put', ts });
    }
  });
  return { events, stop: () => watcher.cancel() };
}

describe('the etcd source shares watchers', () => {
  it('reads the events of several spans of one table through one etcd watcher', async () => {
    const source = openSource();
    try {
      const spans: Span[] = ['0', '1', '2', '3'].map((d) => ({ table: 't1', start: `t1/${d}`, end: `t1/${d}~` }));
      const from = await source.currentTs();
      const readers = spans.map((span) => new Reader(source, span, from));
      await Promise.all(readers.map((r) => r.step()));
      const history: ChangeEvent[] = [];
      let last = from;
      for (let i = 0; i < 40; i++) {
        const key = `t1/${i % 4}/k${i}`;
        last = await put(key);
        history.push({ table: 't1', key, op: 'put', ts: last });
      }
      await Promise.all(readers.map((r) => r.until(last)));
      for (const reader of readers) expect(reader.events.map(show)).toEqual(expected(history, reader.span, from));
      expect(source.stats()).toMatchObject({ watchers: { group: 1, catchUp: 0 }, groups: 1, spans: 4 });
      // One span per watcher would be four.
      await etcdWatchersBecome(1);
    } finally {
      await source.close();
    }
    await etcdWatchersBecome(0);
  });

  it('watches a told table whole from the first span on: spans joining later create no watcher', async () => {
    const source = new EtcdSource(parseEtcdSourceUri(`etcd://${etcd.endpoint}`), { tables: [{ name: 'tw', start: 'tw/', end: 'tw0' }] });
    try {
      const spans: Span[] = ['0', '5', '9'].map((d) => ({ table: 'tw', start: `tw/${d}`, end: `tw/${d}~` }));
      const from = await source.currentTs();
      const first = new Reader(source, spans[0] as Span, from);
      await first.step();
      await waitFor('the group watcher', async () => (source.stats().watchersCreated === 1 ? true : undefined), 10_000);
      // Later spans at or after the group's position join it without a new watcher.
      const later = spans.slice(1).map((span) => new Reader(source, span, from));
      await Promise.all(later.map((r) => r.step()));
      const last = await put('tw/9/k');
      await Promise.all([first, ...later].map((r) => r.until(last)));
      expect(source.stats()).toMatchObject({ watchersCreated: 1 });
      expect(later.at(-1)?.events.map(show)).toEqual(expected([{ table: 'tw', key: 'tw/9/k', op: 'put', ts: last }], spans[2] as Span, from));
    } finally {
      await source.close();
    }
  });

  it('takes spans into a running group ahead of it and, after a private catch-up, behind it; leaving drops them', async () => {
    const source = openSource();
    try {
      const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((s): Span => ({ table: 't2', start: `t2/${s}`, end: `t2/${s}~` })) as [Span, Span, Span, Span];
      const from = await source.currentTs();
      const history = await recordHistory('t2/', from);
      const ra = new Reader(source, a, from);
      const rb = new Reader(source, b, from);
      await Promise.all([ra.step(), rb.step()]);
      let last = from;
      for (let i = 0; i < 30; i++) last = await put(`t2/${'abc'[i % 3]}/k${i}`);
      await Promise.all([ra.until(last), rb.until(last)]);
      expect(source.stats().watchers).toEqual({ group: 1, catchUp: 0 });

      // c reads from before the group's position: it catches up on its own watcher.
      const rc = new Reader(source, c, from);
      await rc.step();
      expect(source.stats().watchers).toEqual({ group: 1, catchUp: 1 });
      // d reads from now, at or after the group: it joins directly.
      const rd = new Reader(source, d, await source.currentTs());
      const dFrom = rd.pos;
      await rd.step();

      for (let i = 0; i < 40; i++) last = await put(`t2/${'abcd'[i % 4]}/j${i}`);
      await Promise.all([ra, rb, rc, rd].map((r) => r.until(last)));
      await waitFor('c to hand over to the group', async () => {
        await Promise.all([ra, rb, rc, rd].map((r) => r.step()));
        const stats = source.stats();
        return stats.watchers.catchUp === 0 && stats.handOvers >= 1 ? true : undefined;
      });
      expect(source.stats().watchers).toEqual({ group: 1, catchUp: 0 });
      // After the hand-over c's events come from the group, still exactly once.
      for (let i = 0; i < 20; i++) last = await put(`t2/${'abcd'[i % 4]}/h${i}`);
      await Promise.all([ra, rb, rc, rd].map((r) => r.until(last)));
      await waitFor('the plain watch to see everything', () => (history.events.at(-1)?.ts === last ? true : undefined));
      for (const reader of [ra, rb, rc]) expect(reader.events.map(show)).toEqual(expected(history.events, reader.span, from));
      expect(rd.events.map(show)).toEqual(expected(history.events, d, dFrom));
      await etcdWatchersBecome(2);

      source.release(a);
      source.release(b);
      expect(source.stats()).toMatchObject({ watchers: { group: 1, catchUp: 0 }, spans: 2 });
      last = await put('t2/a/after-release');
      last = await put('t2/c/after-release');
      await rc.until(last);
      expect(rc.events.at(-1)?.key).toBe('t2/c/after-release');
      // a reads again from where it stood: nothing it missed while released is lost.
      await ra.until(last);
      await waitFor('the plain watch to see everything', () => (history.events.at(-1)?.ts === last ? true : undefined));
      expect(ra.events.map(show)).toEqual(expected(history.events, a, from));
      source.release(a);
      source.release(c);
      source.release(d);
      // The last span left: the group canceled its watcher.
      expect(source.stats()).toMatchObject({ watchers: { group: 0, catchUp: 0 }, groups: 0, spans: 0 });
      await history.stop();
      await etcdWatchersBecome(0);
    } finally {
      await source.close();
    }
  });

  it('lets one span overflow its buffer while its neighbours keep flowing, then catches it up', async () => {
    const source = openSource('?bufferedEventsMax=100');
    try {
      const slow: Span = { table: 't3', start: 't3/s', end: 't3/s~' };
      const fast: Span = { table: 't3', start: 't3/f', end: 't3/f~' };
      const from = await source.currentTs();
      const history = await recordHistory('t3/', from);
      const rs = new Reader(source, slow, from);
      const rf = new Reader(source, fast, from);
      await Promise.all([rs.step(), rf.step()]);
      let last = from;
      for (let i = 0; i < 250; i++) {
        last = await put(`t3/s/k${i}`);
        if (i % 5 === 0) last = await put(`t3/f/k${i}`);
        if (i % 25 === 0) await rf.step();
      }
      await rf.until(last);
      // The slow span left the group with what it buffered; the fast one is at the end.
      expect(source.stats().overflows).toBeGreaterThanOrEqual(1);
      const slowResolved = await source.resolvedTs(slow, from);
      expect(slowResolved).toBeLessThan(last);
      expect(await source.resolvedTs(fast, rf.pos)).toBeGreaterThanOrEqual(last);
      await rs.until(last);
      await waitFor('the plain watch to see everything', () => (history.events.at(-1)?.ts === last ? true : undefined));
      expect(rs.events.map(show)).toEqual(expected(history.events, slow, from));
      expect(rf.events.map(show)).toEqual(expected(history.events, fast, from));
      await waitFor('the slow span to be back in the group', async () => {
        await Promise.all([rs.step(), rf.step()]);
        return source.stats().watchers.catchUp === 0 ? true : undefined;
      });
      expect(source.stats().watchers).toEqual({ group: 1, catchUp: 0 });
      await history.stop();
    } finally {
      await source.close();
    }
  });

  it('bounds private catch-ups and queues the rest in order; tables beyond the group slots wait', async () => {
    // One catch-up at once; 3 - 1 = 2 tables with a group watcher.
    const source = openSource('?catchUpWatchersMax=1&watchersMax=3');
    try {
      const spans: Span[] = ['0', '1', '2', '3', '4'].map((d) => ({ table: 't4', start: `t4/${d}`, end: `t4/${d}~` }));
      const from = await source.currentTs();
      const history = await recordHistory('t4', from);
      const first = new Reader(source, spans[0] as Span, from);
      await first.step();
      let last = from;
      for (let i = 0; i < 50; i++) last = await put(`t4/${i % 5}/k${i}`);
      await first.until(last);
      const behind = spans.slice(1).map((span) => new Reader(source, span, from));
      await Promise.all(behind.map((r) => r.step()));
      expect(source.stats()).toMatchObject({ watchers: { group: 1, catchUp: 1 }, spansQueued: 3 });
      // A second table gets the other group slot; a third waits for one.
      const second = new Reader(source, { table: 't4b', start: 't4b/', end: 't4b0' }, from);
      await second.step();
      await Promise.all([first, ...behind].map((r) => r.until(last)));
      await waitFor('every span of t4 to reach the group, and t4b its own', async () => {
        await Promise.all([first, ...behind, second].map((r) => r.step()));
        const stats = source.stats();
        return stats.spansQueued === 0 && stats.watchers.catchUp === 0 && stats.watchers.group === 2 ? true : undefined;
      });
      const third = new Reader(source, { table: 't4c', start: 't4c/', end: 't4c0' }, await source.currentTs());
      await third.step();
      const written = await put('t4c/k');
      await waitFor('the second table to see its write', async () => {
        await second.step();
        return second.pos >= written ? true : undefined;
      });
      await third.step();
      expect(third.pos).toBeLessThan(written);
      expect(source.stats().watchers).toEqual({ group: 2, catchUp: 0 });
      source.release(second.span);
      await third.until(written);
      expect(third.events.map((e) => e.key)).toEqual(['t4c/k']);
      expect(source.stats().watchers).toEqual({ group: 2, catchUp: 0 });
      await waitFor('the plain watch to see everything', () => (history.events.some((e) => e.ts === written) ? true : undefined));
      for (const reader of [first, ...behind]) expect(reader.events.map(show)).toEqual(expected(history.events, reader.span, from));
      await history.stop();
    } finally {
      await source.close();
    }
  });

  it('keeps every span in revision order with nothing lost or twice over random joins, leaves and overflows', async () => {
    const stats = await randomRun('t5', '?bufferedEventsMax=100&catchUpWatchersMax=2', () => 'v');
    expect(stats.overflows).toBeGreaterThanOrEqual(0);
  });

  it('keeps every span in revision order with nothing lost or twice when its bytes overflow spans and the source sheds', async () => {
    // Values up to 400 bytes (about 340 bytes an event with key and overhead): a span
    // passes 8 KiB after about 24 events (a burst of 130 passes it), and three slow
    // spans together pass the source's 24 KiB. No count bound is near.
    const stats = await randomRun('t8', '?bufferedEventsMax=100000&spanBufferBytesMax=8192&bufferBytesMax=24576&catchUpWatchersMax=2', (random) => 'x'.repeat(Math.floor(random() * 400)));
    expect(stats.overflows).toBeGreaterThan(0);
    expect(stats.sheds).toBeGreaterThan(0);
    expect(stats.bufferedBytes).toBeLessThanOrEqual(24576);
  });

  it.each([
    { bounds: 'span', params: '?spanBufferBytesMax=4096', table: 't9' },
    { bounds: 'span and source', params: '?spanBufferBytesMax=4096&bufferBytesMax=8192', table: 't10' },
  ])('bounds the bytes buffered ($bounds); cut spans read the rest again from etcd, exactly once', async ({ params, table }) => {
    const source = openSource(params);
    const shedding = params.includes('bufferBytesMax=');
    try {
      const spans: Span[] = ['a', 'b', 'c', 'd'].map((s) => ({ table, start: `${table}/${s}`, end: `${table}/${s}~` }));
      const from = await source.currentTs();
      const history = await recordHistory(`${table}/`, from);
      const readers = spans.map((span) => new Reader(source, span, from));
      await Promise.all(readers.map((r) => r.step()));
      // 4 spans x 12 events x (500 + key + overhead) bytes: about 30 KiB if nothing were bounded.
      let last = from;
      for (let i = 0; i < 12; i++) for (const s of ['a', 'b', 'c', 'd']) last = await put(`${table}/${s}/k${String(i).padStart(2, '0')}`, 'v'.repeat(500));
      await waitFor('the source to receive every write', () => (history.events.at(-1)?.ts === last ? true : undefined));
      // Every span passes 4 KiB (about 7 events) and leaves the group: the group's last
      // watcher is gone once the last member overflowed.
      await waitFor('every span to overflow', () => (source.stats().overflows >= 4 ? true : undefined));
      source.checkInvariants();
      const stats = source.stats();
      expect(stats.overflows).toBe(4);
      if (shedding) {
        // Past 8 KiB before the spans passed 4 KiB each: the largest were cut to one revision.
        expect(stats.sheds).toBeGreaterThanOrEqual(1);
        expect(stats.bufferedBytes).toBeLessThanOrEqual(8192);
      } else {
        expect(stats.sheds).toBe(0);
        expect(stats.bufferedBytes).toBeGreaterThan(8192);
        expect(stats.bufferedBytes).toBeLessThanOrEqual(4 * 4096);
      }
      expect(stats.bufferedBytes).toBeGreaterThan(0);
      // Each reader still gets all of its span, in order, once.
      await Promise.all(readers.map((r) => r.until(last)));
      for (const reader of readers) expect(reader.events.map(show)).toEqual(expected(history.events, reader.span, from));
      expect(source.stats().bufferedBytes).toBe(0);
      await history.stop();
    } finally {
      await source.close();
    }
  });

  it('starts a group far behind the head at the head, its spans catching up side by side, exactly once', async () => {
    // Told the table: the group watches it whole, so no hand-over grows (re-creates) it.
    const tables = [{ name: 't11', start: 't11/', end: 't110' }];
    const behind = new EtcdSource(parseEtcdSourceUri(`etcd://${etcd.endpoint}?groupStartBehindMax=500`), { tables });
    const near = new EtcdSource(parseEtcdSourceUri(`etcd://${etcd.endpoint}`), { tables });
    try {
      const from = await behind.currentTs();
      const history = await recordHistory('t11/', from);
      // 800 revisions: past 500, within the default of 1,000.
      let last = from;
      for (let i = 0; i < 800; i += 50) {
        const revisions = await Promise.all(Array.from({ length: 50 }, (_, j) => put(`t11/${(i + j) % 4}/k${i + j}`)));
        for (const revision of revisions) if (revision > last) last = revision;
      }
      await waitFor('the plain watch to see everything', () => (history.events.at(-1)?.ts === last ? true : undefined));
      const spans: Span[] = ['0', '1', '2', '3'].map((d) => ({ table: 't11', start: `t11/${d}`, end: `t11/${d}~` }));
      for (const [source, catchUps] of [[behind, 4], [near, 0]] as const) {
        const readers = spans.map((span) => new Reader(source, span, from));
        await Promise.all(readers.map((r) => r.step()));
        await Promise.all(readers.map((r) => r.until(last)));
        for (const reader of readers) expect(reader.events.map(show)).toEqual(expected(history.events, reader.span, from));
        // Far behind: the group watches from the head, every span read its backlog on its
        // own watcher and then moved into the group. Near: one watcher for all.
        await waitFor('the spans to be in the group', async () => {
          await Promise.all(readers.map((r) => r.step()));
          const stats = source.stats();
          return stats.watchers.catchUp === 0 && stats.handOvers === catchUps ? true : undefined;
        });
        expect(source.stats()).toMatchObject({ watchers: { group: 1, catchUp: 0 }, watchersCreated: 1 + catchUps, handOvers: catchUps });
      }
      await history.stop();
    } finally {
      await Promise.all([behind.close(), near.close()]);
    }
  });

  it('reads a backlog of 128-put transactions whose watch responses pass 4 MiB', async () => {
    const source = openSource();
    try {
      const from = await source.currentTs();
      // 400 revisions of 128 puts of 100 bytes: one response to a watcher behind holds
      // them all, about 6 MB (gRPC's default limit is 4 MiB).
      let last = from;
      for (let t = 0; t < 400; t += 8) {
        const answers = await Promise.all(
          Array.from({ length: 8 }, (_, j) =>
            client.kv.txn({ success: Array.from({ length: 128 }, (_, i) => ({ request_put: { key: Buffer.from(`t12/${String((t + j) * 128 + i).padStart(6, '0')}`), value: Buffer.alloc(100, 120) } })) }),
          ),
        );
        for (const answer of answers) if (BigInt(answer.header.revision) > last) last = BigInt(answer.header.revision);
      }
      const reader = new Reader(source, { table: 't12', start: 't12/', end: 't120' }, from);
      await reader.until(last);
      expect(reader.events).toHaveLength(400 * 128);
      // In revision order, each revision's puts in key order, each key once.
      const keys = reader.events.map((e) => e.key);
      expect(new Set(keys).size).toBe(400 * 128);
      for (let i = 1; i < reader.events.length; i++) expect((reader.events[i] as ChangeEvent).ts >= (reader.events[i - 1] as ChangeEvent).ts).toBe(true);
      // One group watcher, re-created only by the overflows of its 4 MiB buffer, not by a broken stream.
      expect(source.stats().watchersCreated).toBeLessThanOrEqual(1 + source.stats().overflows);
    } finally {
      await source.close();
    }
  }, 60_000);

  it('fails with CompactedError the spans whose watcher starts in compacted history, and only those', async () => {
    const source = openSource();
    try {
      const old = await put('t6/o/k0');
      await put('t6/o/k1');
      const now = await put('t6/n/k0');
      await client.kv.compact({ revision: now.toString(), physical: true });
      const fresh = new Reader(source, { table: 't6', start: 't6/n', end: 't6/n~' }, now);
      await fresh.step();
      // Behind the group, from compacted history: its private watcher is refused.
      const stale: Span = { table: 't6', start: 't6/o', end: 't6/o~' };
      await waitFor('the stale span to fail', async () => {
        try {
          await source.read(stale, old - 1n, FAR, 100);
          return undefined;
        } catch (error) {
          return error instanceof CompactedError ? true : undefined;
        }
      });
      const last = await put('t6/n/k1');
      await fresh.until(last);
      expect(fresh.events.map((e) => e.key)).toEqual(['t6/n/k1']);
      // A table whose group itself starts in compacted history fails its spans too.
      const other = openSource();
      try {
        await waitFor('the group to fail', async () => {
          try {
            await other.read({ table: 't6', start: 't6/n', end: 't6/n~' }, old - 1n, FAR, 100);
            return undefined;
          } catch (error) {
            return error instanceof CompactedError ? true : undefined;
          }
        });
      } finally {
        await other.close();
      }
    } finally {
      await source.close();
    }
  });
});

/**
 * A seeded random run of joins, leaves, small reads and a writer (puts with `value`,
 * deletes, bursts) over 8 spans of `table`, read by a source opened with `params`;
 * checks after every step that each span got exactly its events in revision order and
 * returns the source's stats at the end.
 */
async function randomRun(table: string, params: string, value: (random: () => number) => string): Promise<SourceStats> {
  const seed = Number(process.env.ETCD_SOURCE_SEED ?? Math.floor(Math.random() * 2 ** 31));
  console.log(`etcd source random run ${table}: ETCD_SOURCE_SEED=${seed}`);
  const random = mulberry32(seed);
  const pick = <T,>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
  const source = openSource(params);
  try {
    const bounds = ['/', '/1', '/2', '/3', '/4', '/5', '/6', '/7', '/8'].map((b) => `${table}${b}`);
    const spans: Span[] = bounds.slice(0, -1).map((start, i) => ({ table, start, end: bounds[i + 1] as string }));
    const keys = Array.from({ length: 64 }, (_, i) => `${table}/${i % 8}/k${i >> 3}`);
    const from = await source.currentTs();
    const history = await recordHistory(`${table}/`, from);
    const readers = spans.map((span) => new Reader(source, span, from));
    // Some readers are slow: a burst on their keys overflows their buffers.
    const speed = new Map(readers.map((r) => [r, pick([0.01, 0.2, 1])]));
    const active = new Set<Reader>();
    let writing = true;
    let last = from;
    const writer = (async () => {
      for (let i = 0; i < 700; i++) {
        const burst = random() < 0.02;
        if (burst) {
          // A burst on one span's keys: past its buffer if it is not read meanwhile.
          const digit = Math.floor(random() * 8);
          for (let j = 0; j < 130; j++) last = await put(`${table}/${digit}/burst${j}`, `${i}${value(random)}`);
        } else if (random() < 0.15) last = await del(pick(keys));
        else last = await put(pick(keys), `${i}${value(random)}`);
      }
      writing = false;
    })();
    let steps = 0;
    while (writing) {
      const reader = pick(readers);
      const roll = random();
      if (!active.has(reader)) {
        if (roll < 0.3) active.add(reader);
      } else if (roll < 0.01) {
        // Leaves; when it comes back it reads from where it stood, like a moved span
        // from its checkpoint.
        source.release(reader.span);
        source.checkInvariants();
        active.delete(reader);
      } else if (random() < (speed.get(reader) as number)) await reader.step(1 + Math.floor(random() * 40));
      // Reads are answered from buffers: let the writer and the watch stream run.
      if (++steps % 20 === 0 || active.size === 0) await new Promise((resolve) => setTimeout(resolve, 1));
    }
    await writer;
    await Promise.all(readers.map((r) => r.until(last)));
    await waitFor('the plain watch to see everything', () => (history.events.at(-1)?.ts === last ? true : undefined));
    for (const reader of readers) {
      const got = reader.events.map((e) => e.ts);
      for (let i = 1; i < got.length; i++) expect(got[i] as bigint).toBeGreaterThan(got[i - 1] as bigint);
      expect(reader.events.map(show), `span ${reader.span.start} (seed ${seed})`).toEqual(expected(history.events, reader.span, from));
    }
    const stats = source.stats();
    console.log(`etcd source random run ${table}: ${JSON.stringify(stats)}, ${history.events.length} events`);
    expect(stats.watchers.group).toBe(1);
    expect(stats.watchers.catchUp).toBeLessThanOrEqual(2);
    await history.stop();
    return stats;
  } finally {
    await source.close();
  }
}

/** A small seeded generator (mulberry32), so a failing run replays from its seed. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
