import { describe, expect, it } from 'vitest';
import { ConfigError, parseServerConfig, serverDefaults } from '../../src/server/server-config.ts';

describe('server config: the gRPC bounds', () => {
  it('defaults every bound and takes flags and variables', () => {
    const defaults = parseServerConfig([], {});
    expect(defaults).toMatchObject({
      rpcSpansPerMessageMax: 1_024,
      rpcMessageBytesMax: 4 * 1024 * 1024,
      rpcStreamsPerConnectionMax: 16,
      rpcStreamsPerPeerMax: 64,
      rpcConnectionsPerPeerMax: 64,
      captureSpansMax: 1_000_000,
    });
    expect(defaults.rpcSpansPerMessageMax).toBe(serverDefaults.rpcSpansPerMessageMax);
    const set = parseServerConfig(
      ['--rpc-spans-per-message', '2048', '--rpc-streams-per-connection', '4', '--rpc-streams-per-peer', '8', '--rpc-connections-per-peer', '2', '--capture-spans', '500'],
      { SPANFEED_RPC_MESSAGE_BYTES: '1048576' },
    );
    expect(set).toMatchObject({ rpcSpansPerMessageMax: 2_048, rpcMessageBytesMax: 1_048_576, rpcStreamsPerConnectionMax: 4, rpcStreamsPerPeerMax: 8, rpcConnectionsPerPeerMax: 2, captureSpansMax: 500 });
  });

  it('refuses a spans-per-message bound below what an owner sends, and zero bounds', () => {
    expect(() => parseServerConfig(['--rpc-spans-per-message', '100'], {})).toThrow(ConfigError);
    expect(() => parseServerConfig(['--rpc-spans-per-message', '100'], {})).toThrow(/--rpc-spans-per-message must be an integer from 1024/);
    expect(() => parseServerConfig(['--rpc-streams-per-peer', '0'], {})).toThrow(/--rpc-streams-per-peer/);
    expect(() => parseServerConfig(['--capture-spans', '0'], {})).toThrow(/--capture-spans/);
  });
});

describe('server config: the split policy', () => {
  it('defaults every threshold, takes flags and variables, and keeps the merge threshold at most half the split one', () => {
    const defaults = parseServerConfig([], {});
    expect(defaults).toMatchObject({ splitRateMin: 1_000, mergeRateMax: 200, splitAfterMs: 10_000, mergeAfterMs: 60_000, splitCoolDownMs: 60_000, splitSpansPerTableMax: 1_024 });
    expect(serverDefaults.splitRateMin).toBe(defaults.splitRateMin);
    const set = parseServerConfig(['--split-rate-min', '300', '--split-after-ms', '1000'], { SPANFEED_MERGE_RATE_MAX: '50', SPANFEED_SPLIT_SPANS_PER_TABLE: '64' });
    expect(set).toMatchObject({ splitRateMin: 300, mergeRateMax: 50, splitAfterMs: 1_000, splitSpansPerTableMax: 64 });
    // A low split threshold brings the default merge threshold down with it.
    expect(parseServerConfig(['--split-rate-min', '100'], {}).mergeRateMax).toBe(50);
    expect(() => parseServerConfig(['--split-rate-min', '100', '--merge-rate-max', '51'], {})).toThrow(/--merge-rate-max \(51\) must be at most half of --split-rate-min \(100\)/);
    expect(() => parseServerConfig(['--split-rate-min', '0'], {})).toThrow(ConfigError);
    expect(() => parseServerConfig(['--split-after-ms', '10'], {})).toThrow(/--split-after-ms/);
  });
});
