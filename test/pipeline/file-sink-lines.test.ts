/**
 * The file sink's NDJSON lines, built member by member for speed, are exactly what
 * `JSON.stringify` of the event's fields gives (the format readers and the verifier
 * parse), over random keys and values: ASCII, JSON escapes, valid UTF-8 of every length,
 * and bytes that are not UTF-8.
 */
import { describe, expect, it } from 'vitest';
import { eventLine } from '../../src/pipeline/sinks/file.ts';
import type { ChangeEvent } from '../../src/pipeline/source.ts';

/** The line as the sink wrote it before: one object, `JSON.stringify`. */
function referenceLine(event: ChangeEvent): string {
  const encode = (name: string, binary: string): Record<string, string> => {
    const bytes = Buffer.from(binary, 'latin1');
    const text = bytes.toString('utf8');
    return Buffer.from(text, 'utf8').equals(bytes) ? { [name]: text } : { [`${name}Base64`]: bytes.toString('base64') };
  };
  const fields: Record<string, string> = { table: event.table, ...encode('key', event.key), op: event.op, ts: event.ts.toString() };
  if (event.op === 'put' && event.value !== undefined) Object.assign(fields, encode('value', event.value));
  return `${JSON.stringify(fields)}\n`;
}

/** A seeded generator (mulberry32): the same cases on every run. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** A binary string of one of the shapes keys and values take. */
function binaryString(next: () => number): string {
  const length = Math.floor(next() * 12);
  switch (Math.floor(next() * 4)) {
    case 0:
      return Array.from({ length }, () => String.fromCharCode(0x20 + Math.floor(next() * 0x5f))).join('');
    case 1:
      return Array.from({ length }, () => '"\\\n\t\u0000\u001f\u007f/'.charAt(Math.floor(next() * 9))).join('');
    case 2: {
      const text = Array.from({ length }, () => String.fromCodePoint([0x41, 0xe9, 0x20ac, 0x1f600, 0xfeff][Math.floor(next() * 5)] as number)).join('');
      return Buffer.from(text, 'utf8').toString('latin1');
    }
    default:
      return Array.from({ length }, () => String.fromCharCode(Math.floor(next() * 256))).join('');
  }
}

describe('file sink lines', () => {
  it('are the JSON.stringify text of the fields, for any bytes', () => {
    const next = random(13);
    for (let i = 0; i < 5_000; i++) {
      const op = next() < 0.2 ? 'delete' : 'put';
      const event: ChangeEvent = op === 'put' ? { table: 't-1.x', key: binaryString(next), value: binaryString(next), op, ts: BigInt(Math.floor(next() * 2 ** 53)) } : { table: 't-1.x', key: binaryString(next), op, ts: 2n ** 63n + BigInt(i) };
      expect(eventLine(event)).toBe(referenceLine(event));
    }
  });

  it('encode a surrogate pair written as UTF-8 (CESU-8) and a lone continuation byte as base64', () => {
    for (const bytes of [[0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80], [0x80], [0xc0, 0xaf]]) {
      const event: ChangeEvent = { table: 't', key: 'k', value: Buffer.from(bytes).toString('latin1'), op: 'put', ts: 1n };
      expect(JSON.parse(eventLine(event))).toEqual({ table: 't', key: 'k', op: 'put', ts: '1', valueBase64: Buffer.from(bytes).toString('base64') });
      expect(eventLine(event)).toBe(referenceLine(event));
    }
  });
});
