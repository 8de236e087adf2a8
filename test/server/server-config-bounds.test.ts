/**
 * `--file-sink-root` and `--allowed-endpoints` are wired like every other server option:
 * flag, `SPANFEED_*` variable, config file key, default.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { endpointAllowed } from '../../src/pipeline/bounds.ts';
import { ConfigError, parseServerConfig } from '../../src/server/server-config.ts';

describe('server bounds options', () => {
  it('defaults to ./spanfeed-data and any endpoint', () => {
    const config = parseServerConfig([], {});
    expect(config.fileSinkRoot).toBe(resolve('spanfeed-data'));
    expect(config.allowedEndpoints).toBeUndefined();
  });

  it('takes a flag, a variable or a config key; the flag wins', () => {
    const dir = mkdtempSync(join(tmpdir(), 'spanfeed-config-'));
    try {
      const file = join(dir, 'config.json');
      writeFileSync(file, JSON.stringify({ fileSinkRoot: '/from/file', allowedEndpoints: 'db:5432' }));
      const fromFile = parseServerConfig(['--config', file], {});
      expect(fromFile.fileSinkRoot).toBe('/from/file');
      expect(endpointAllowed(fromFile.allowedEndpoints!, 'db', 5432)).toBe(true);
      expect(parseServerConfig(['--config', file], { SPANFEED_FILE_SINK_ROOT: '/from/env' }).fileSinkRoot).toBe('/from/env');
      expect(parseServerConfig(['--config', file, '--file-sink-root', 'rel/dir'], { SPANFEED_FILE_SINK_ROOT: '/from/env' }).fileSinkRoot).toBe(resolve('rel/dir'));
      const fromEnv = parseServerConfig([], { SPANFEED_ALLOWED_ENDPOINTS: '10.0.0.0/8' });
      expect(endpointAllowed(fromEnv.allowedEndpoints!, '10.1.2.3', 1)).toBe(true);
      expect(endpointAllowed(fromEnv.allowedEndpoints!, '11.1.2.3', 1)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a bad list with a message naming the option', () => {
    expect(() => parseServerConfig(['--allowed-endpoints', 'a b'], {})).toThrow(ConfigError);
    expect(() => parseServerConfig(['--allowed-endpoints', 'a b'], {})).toThrow(/--allowed-endpoints: allowed endpoint "a b"/);
  });
});

describe('gRPC span ids and progress bounds', () => {
  it('defaults to a million span ids per stream, takes 0 (off) to the protocol bound, and refuses more', () => {
    expect(parseServerConfig([], {}).rpcSpanIdsMax).toBe(1_048_576);
    expect(parseServerConfig(['--rpc-span-ids', '0'], {}).rpcSpanIdsMax).toBe(0);
    expect(parseServerConfig([], { SPANFEED_RPC_SPAN_IDS: '2097152' }).rpcSpanIdsMax).toBe(2_097_152);
    expect(() => parseServerConfig(['--rpc-span-ids', '2097153'], {})).toThrow(/--rpc-span-ids must be an integer from 0 to 2097152/);
  });

  it('keeps a report within the progress entries a receiver reads', () => {
    expect(parseServerConfig(['--progress-slice', '7192'], {}).progressSliceMax).toBe(7_192);
    expect(() => parseServerConfig(['--progress-slice', '7193'], {})).toThrow(/--progress-slice must be an integer from 0 to 7192/);
  });
});

describe('quiet span checks', () => {
  it('defaults to checks of 4096 spans, 4 at once, each span every 500 ms; 0 turns them off', () => {
    const config = parseServerConfig([], {});
    expect([config.pipelineQuietBatch, config.pipelineQuietChecksInFlight, config.pipelineQuietIntervalMs]).toEqual([4_096, 4, 500]);
    expect(parseServerConfig(['--pipeline-quiet-batch', '0'], {}).pipelineQuietBatch).toBe(0);
    expect(parseServerConfig([], { SPANFEED_PIPELINE_QUIET_INTERVAL_MS: '250' }).pipelineQuietIntervalMs).toBe(250);
    expect(() => parseServerConfig(['--pipeline-quiet-checks-in-flight', '0'], {})).toThrow(/--pipeline-quiet-checks-in-flight must be an integer from 1 to 64/);
    expect(() => parseServerConfig(['--pipeline-quiet-interval-ms', '5'], {})).toThrow(/--pipeline-quiet-interval-ms must be an integer from 10/);
  });
});

describe('full-status collections', () => {
  it('default to a 30-minute backstop, take 1 s to a day, and refuse anything else', () => {
    expect(parseServerConfig([], {}).collectIntervalS).toBe(1_800);
    expect(parseServerConfig(['--collect-interval-s', '30'], {}).collectIntervalS).toBe(30);
    expect(parseServerConfig([], { SPANFEED_COLLECT_INTERVAL_S: '600' }).collectIntervalS).toBe(600);
    expect(() => parseServerConfig(['--collect-interval-s', '0'], {})).toThrow(/--collect-interval-s must be an integer from 1 to 86400/);
    expect(() => parseServerConfig(['--collect-interval-s', 'soon'], {})).toThrow(/--collect-interval-s/);
  });
});
