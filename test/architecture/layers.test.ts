/**
 * The layers, checked from the sources: the pure core imports no I/O, and the HTTP API
 * sits on top of the server (the server never imports it, so there is no import circle).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const src = fileURLToPath(new URL('../../src', import.meta.url));

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? files(join(dir, entry.name)) : entry.name.endsWith('.ts') ? [join(dir, entry.name)] : [],
  );
}

/** Every module specifier a file imports, with the file's path under src/. */
function imports(folder: string): { file: string; from: string }[] {
  return files(join(src, folder)).flatMap((file) =>
    [...readFileSync(file, 'utf8').matchAll(/^\s*(?:import|export)[^'"]*from\s+'([^']+)'/gm)].map((m) => ({ file: relative(src, file), from: m[1] as string })),
  );
}

describe('layers', () => {
  it('src/core and src/agent are pure: no node, etcd, gRPC or logging imports', () => {
    const impure = [...imports('core'), ...imports('agent')].filter(({ from }) => !from.startsWith('.'));
    expect(impure).toEqual([]);
    const outside = [...imports('core'), ...imports('agent')].filter(({ file, from }) => {
      const target = join(src, file, '..', from);
      return !target.startsWith(join(src, 'core')) && !target.startsWith(join(src, 'agent'));
    });
    expect(outside).toEqual([]);
  });

  it('nothing below the API imports it', () => {
    const below = ['server', 'cluster', 'core', 'agent', 'pipeline', 'rpc', 'verify', 'security'].flatMap((folder) => imports(folder));
    expect(below.filter(({ file, from }) => join(src, file, '..', from).startsWith(join(src, 'api')))).toEqual([]);
  });
});
