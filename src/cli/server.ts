/**
 * `spanfeed server`: runs one capture until SIGTERM/SIGINT; SIGHUP reads the API token
 * file again.
 */
import { readFileSync, statSync } from 'node:fs';
import { createRootLogger } from '../log.ts';
import { TokenFile, TokenFileError } from '../api/auth.ts';
import { HttpApi } from '../api/http-api.ts';
import { Capture } from '../server/capture.ts';
import { EtcdSecurityError } from '../security/etcd-security.ts';
import { ConfigError, isLoopbackAddress, parseServerConfig, serverUsage } from '../server/server-config.ts';

/** What a shutdown may take beyond its drain wait before the process exits anyway. */
const shutdownGraceMs = 10_000;

export async function runServer(argv: readonly string[], version: string): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(serverUsage);
    return 0;
  }
  let config;
  try {
    config = parseServerConfig(argv, process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`spanfeed server: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  let tokens: TokenFile | undefined;
  if (config.authTokenFile !== undefined) {
    tokens = new TokenFile(config.authTokenFile, (path) => readFileSync(path, 'utf8'));
    try {
      tokens.load();
    } catch (error) {
      if (error instanceof TokenFileError) {
        process.stderr.write(`spanfeed server: --auth-token-file: ${error.message}\n`);
        return 2;
      }
      throw error;
    }
  }
  const log = createRootLogger(config.logLevel, { pid: process.pid });
  if (tokens !== undefined) {
    const file = tokens;
    log.info({ authTokenFile: file.path, tokens: file.table?.size }, 'api tokens loaded');
    if (isReadableByOthers(file.path)) log.warn({ authTokenFile: file.path }, 'api token file is readable by other users');
    process.on('SIGHUP', () => {
      try {
        const table = file.load();
        log.info({ authTokenFile: file.path, tokens: table.size }, 'api tokens reloaded');
      } catch (error) {
        // The tokens in use stay: a typo in the file must not lock every operator out.
        log.error({ authTokenFile: file.path, err: error }, 'api token file reload failed; keeping the tokens in use');
      }
    });
  } else if (!isLoopbackAddress(config.httpAddr)) {
    log.warn({ httpAddr: config.httpAddr }, 'http api serves without tokens on an address other than loopback (--insecure)');
  }
  let capture: Capture;
  try {
    capture = new Capture(config, version, log, (c) => new HttpApi(c, { tokens }));
  } catch (error) {
    // A metadata etcd TLS or password file that cannot be used: a bad config, like a bad flag.
    if (error instanceof EtcdSecurityError) {
      log.fatal({ err: error }, 'capture failed to start');
      process.stderr.write(`spanfeed server: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  try {
    await capture.start();
  } catch (error) {
    // start() has released what it opened; the cause goes to the log and, for whoever
    // reads the terminal, as one plain line.
    log.fatal({ err: error }, 'capture failed to start');
    process.stderr.write(`spanfeed server: ${messageWithCauses(error)}\n`);
    // Whatever a library left open must not keep a capture that never started alive.
    setTimeout(() => process.exit(1), 200).unref();
    return 1;
  }
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      const drainWaitMs = signal === 'SIGINT' ? 0 : config.drainWaitMs;
      log.info({ signal, drainWaitMs }, 'stopping');
      // A shutdown that hangs (etcd unreachable, a stuck sink) must not keep the process.
      setTimeout(() => {
        log.error({ afterMs: drainWaitMs + shutdownGraceMs }, 'shutdown took too long; exiting');
        process.exit(1);
      }, drainWaitMs + shutdownGraceMs).unref();
      capture
        .shutdown(drainWaitMs)
        .then(() => finish(0))
        .catch((error: unknown) => {
          log.error({ err: error }, 'shutdown failed');
          finish(1);
        });
    };
    const finish = (code: number): void => {
      log.info({ code }, 'stopped');
      resolve(code);
      // Whatever a library left open (a socket, a timer) must not keep the process alive.
      setTimeout(() => process.exit(code), 200).unref();
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}

/** True when the file's mode lets users other than its owner read it. */
function isReadableByOthers(path: string): boolean {
  try {
    return (statSync(path).mode & 0o004) !== 0;
  } catch {
    return false;
  }
}

/** `message: cause's message: ...`, as pino logs an error's message. */
function messageWithCauses(error: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = error; e !== undefined && parts.length < 10; e = (e as { cause?: unknown }).cause) {
    parts.push(e instanceof Error ? e.message : String(e));
  }
  return parts.join(': ');
}
