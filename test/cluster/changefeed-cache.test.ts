/**
 * The changefeed cache keeps, per key, the newer of a whole read and the owner's own
 * write: a read that started before a write and answered after it undoes nothing.
 */
import type { IKeyValue } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { ChangefeedCache } from '../../src/cluster/changefeed-cache.ts';
import type { ChangefeedInfo, ChangefeedStatus } from '../../src/server/changefeed-info.ts';

const prefix = '/spanfeed/t/changefeeds/';

function info(id: string, epoch = '1', state: ChangefeedInfo['state'] = 'normal'): ChangefeedInfo {
  return { id, source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }], start: 'now', startTs: '1', state, epoch, createdAt: 'x' } as ChangefeedInfo;
}

function kv(key: string, value: unknown, modRevision: number): IKeyValue {
  return { key: Buffer.from(prefix + key), value: Buffer.from(JSON.stringify(value)), mod_revision: String(modRevision), create_revision: '1', version: '1', lease: '0' } as IKeyValue;
}

const status = (checkpointTs: string): ChangefeedStatus => ({ checkpointTs, resolvedTs: checkpointTs, updatedAt: 'x' });

describe('ChangefeedCache', () => {
  it('keeps a write that an older read does not show yet, and drops it once a read covers it', () => {
    const cache = new ChangefeedCache(prefix);
    cache.applySnapshot(10n, [kv('a/info', info('a'), 5), kv('a/status', status('100'), 9)]);
    // The owner creates b at revision 12 and writes a's checkpoint at 13.
    cache.applyWrite(12n, { id: 'b', info: info('b'), status: status('7') });
    cache.applyWrite(13n, { id: 'a', status: status('150') });
    // A read that started at revision 11 answers now: b is not in it, a's status is old.
    cache.applySnapshot(11n, [kv('a/info', info('a'), 5), kv('a/status', status('100'), 9)]);
    expect([...cache.infos.keys()].sort()).toEqual(['a', 'b']);
    expect(cache.statuses.get('a')?.checkpointTs).toBe('150');
    expect(cache.status('a')?.modRevision).toBe(13n);
    // A read at 20 covers both writes and says what etcd holds.
    cache.applySnapshot(20n, [kv('a/info', info('a'), 5), kv('a/status', status('180'), 18), kv('b/info', info('b'), 12)]);
    expect(cache.statuses.get('a')?.checkpointTs).toBe('180');
    expect(cache.statuses.has('b')).toBe(false);
  });

  it('a delete is not undone by an older read, and a newer read may bring the id back', () => {
    const cache = new ChangefeedCache(prefix);
    cache.applySnapshot(10n, [kv('a/info', info('a'), 5)]);
    cache.applyWrite(12n, { id: 'a', info: null, status: null });
    cache.applySnapshot(11n, [kv('a/info', info('a'), 5)]);
    expect(cache.infos.has('a')).toBe(false);
    // Re-created later with a new epoch.
    cache.applySnapshot(30n, [kv('a/info', info('a', '31'), 25)]);
    expect(cache.infos.get('a')?.epoch).toBe('31');
  });

  it('keeps the parsed value (and its identity) of a key that did not change', () => {
    const cache = new ChangefeedCache(prefix);
    cache.applySnapshot(10n, [kv('a/info', info('a'), 5)]);
    const first = cache.infos.get('a');
    cache.applySnapshot(11n, [kv('a/info', info('a'), 5)]);
    expect(cache.infos.get('a')).toBe(first);
    cache.applySnapshot(12n, [kv('a/info', info('a', '2', 'paused'), 12)]);
    expect(cache.infos.get('a')).not.toBe(first);
    expect(cache.infos.get('a')?.state).toBe('paused');
  });

  it('ignores a write older than what it holds, and reports malformed keys', () => {
    const malformed: string[] = [];
    const cache = new ChangefeedCache(prefix, (key) => malformed.push(key));
    cache.applySnapshot(20n, [kv('a/status', status('200'), 19), { ...kv('bad/info', {}, 3), value: Buffer.from('{nope') } as IKeyValue]);
    cache.applyWrite(15n, { id: 'a', status: status('150') });
    expect(cache.statuses.get('a')?.checkpointTs).toBe('200');
    expect(malformed).toEqual([`${prefix}bad/info`]);
  });
});
