import type { IKeyValue } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { readCaptureRecords } from '../../src/server/capture-records.ts';

const prefix = '/spanfeed/t/captures/';
const valid = (id: string, fields: Record<string, unknown> = {}): string =>
  JSON.stringify({ id, grpcAddr: '127.0.0.1:7001', httpAddr: '[::1]:8001', version: '0.1.0', startedAt: '2024-01-01T00:00:00Z', ...fields });

function kv(id: string, value: string, lease = '7587'): IKeyValue {
  return { key: Buffer.from(prefix + id), value: Buffer.from(value), lease, mod_revision: '9', create_revision: '9', version: '1' };
}

describe('readCaptureRecords', () => {
  it('keeps leased records that fit their key and says why it drops the rest', () => {
    const { captures, ignored } = readCaptureRecords(
      [
        kv('a', valid('a')),
        kv('b', valid('b'), '0'),
        kv('c', valid('other')),
        kv('d', valid('d', { grpcAddr: 'nowhere' })),
        kv('e', valid('e', { httpAddr: '127.0.0.1:70000' })),
        kv('f', valid('f', { version: 3 })),
        kv('g', '{not json'),
        kv('h', '[]'),
      ],
      prefix,
    );
    expect([...captures.keys()]).toEqual(['a']);
    expect(ignored.map((i) => [i.key.slice(prefix.length), i.reason])).toEqual([
      ['b', 'no-lease'],
      ['c', 'invalid'],
      ['d', 'invalid'],
      ['e', 'invalid'],
      ['f', 'invalid'],
      ['g', 'invalid'],
      ['h', 'invalid'],
    ]);
    expect(ignored.find((i) => i.key === `${prefix}c`)?.detail).toBe('id "other" is not the key\'s "c"');
    expect(ignored.find((i) => i.key === `${prefix}d`)?.detail).toBe('grpcAddr must be host:port, got "nowhere"');
  });
});
