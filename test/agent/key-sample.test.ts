/**
 * The key sample a span pipeline takes its split key from (issue 12, item 3): a bounded
 * reservoir per rate window, the median strictly after the span's start.
 */
import { describe, expect, it } from 'vitest';
import { KeySample, splitKeyOf } from '../../src/agent/key-sample.ts';
import { SeededRandom } from '../../src/core/rng.ts';

describe('key sample', () => {
  it('keeps at most its size, and every written key of a window is as likely to be in it', () => {
    // 1,000 windows of keys 000..099 written in order: a sample biased to the last (or
    // first) keys of a window would show in the counts per key.
    const counts = new Array<number>(100).fill(0);
    const sample = new KeySample(10, 't\u0000a');
    const keys = Array.from({ length: 100 }, (_, i) => String(i).padStart(3, '0'));
    for (let window = 0; window < 1_000; window++) {
      sample.add(keys.slice(0, 50));
      sample.add(keys.slice(50));
      const sorted = (sample as unknown as { keys: string[] }).keys;
      expect(sorted.length).toBe(10);
      for (const key of sorted) counts[Number(key)] = (counts[Number(key)] as number) + 1;
      expect(sample.close('').written).toBe(100);
    }
    // Each key is in a sample with probability 10/100: about 100 times in 1,000 windows.
    for (const count of counts) {
      expect(count).toBeGreaterThan(60);
      expect(count).toBeLessThan(145);
    }
  });

  it('names the median of the window, then starts afresh', () => {
    const sample = new KeySample(64, 'x');
    const rng = new SeededRandom(7);
    // Keys 0..999, most writes on 500..599.
    const keys: string[] = [];
    for (let i = 0; i < 5_000; i++) keys.push(String(rng.chance(0.8) ? 500 + rng.int(100) : rng.int(1_000)).padStart(4, '0'));
    sample.add(keys);
    const estimate = sample.close('');
    expect(estimate.written).toBe(5_000);
    expect(estimate.splitKey! >= '0500' && estimate.splitKey! < '0600').toBe(true);
    expect(estimate.distinctKeys).toBeGreaterThan(20);
    expect(estimate.distinctKeys).toBeLessThanOrEqual(64);
    // A window with no writes names nothing.
    expect(sample.close('')).toEqual({ splitKey: undefined, distinctKeys: 0, written: 0 });
    // A reservoir of 0 samples nothing.
    const none = new KeySample(0, 'x');
    none.add(['a', 'b']);
    expect(none.close('').splitKey).toBeUndefined();
  });

  it('takes the next key above the span start when the median is the start (one hot first key), none when nothing is above it', () => {
    expect(splitKeyOf(['b', 'c', 'd'], 'a')).toBe('c');
    expect(splitKeyOf(['a', 'a', 'a', 'a', 'c'], 'a')).toBe('c');
    expect(splitKeyOf(['a', 'a', 'a'], 'a')).toBeUndefined();
    expect(splitKeyOf([], '')).toBeUndefined();
    // Upper median of an even sample.
    expect(splitKeyOf(['b', 'c', 'd', 'e'], 'a')).toBe('d');
  });
});
