/**
 * The etcd source's buffer bounds in its URI: defaults, ranges, and a per-span bound
 * that may not exceed the source's; the far-behind group start and the watch response
 * size.
 */
import { describe, expect, it } from 'vitest';
import { parseEtcdSourceUri } from '../../src/pipeline/sources/etcd.ts';
import { BadUriError } from '../../src/pipeline/uri.ts';

describe('etcd source uri buffer bounds', () => {
  it('defaults to 4 MiB a span and 256 MiB a source', () => {
    const options = parseEtcdSourceUri('etcd://127.0.0.1:2379');
    expect(options.spanBufferBytesMax).toBe(4 * 2 ** 20);
    expect(options.bufferBytesMax).toBe(256 * 2 ** 20);
    expect(options.bufferedEventsMax).toBe(100_000);
    expect(options.groupStartBehindMax).toBe(1_000);
    expect(options.watchResponseBytesMax).toBe(256 * 2 ** 20);
  });

  it('takes both bounds from the uri', () => {
    const options = parseEtcdSourceUri('etcd://127.0.0.1:2379?spanBufferBytesMax=65536&bufferBytesMax=1048576');
    expect(options.spanBufferBytesMax).toBe(65_536);
    expect(options.bufferBytesMax).toBe(1_048_576);
  });

  it.each([
    'spanBufferBytesMax=1023',
    'spanBufferBytesMax=1.5',
    'spanBufferBytesMax=-1',
    'bufferBytesMax=0',
    'bufferBytesMax=x',
    // A span's bound above the source's.
    'spanBufferBytesMax=8192&bufferBytesMax=4096',
    // Below gRPC's own default.
    'watchResponseBytesMax=1048576',
    'groupStartBehindMax=-5',
  ])('refuses %s', (params) => {
    expect(() => parseEtcdSourceUri(`etcd://127.0.0.1:2379?${params}`)).toThrow(BadUriError);
  });
});
