/**
 * The postgres sink's `passwordFile`: the password is read from the file when a
 * connection opens and sent to the server, and is in no URI. A minimal server speaking
 * the start of the PostgreSQL protocol asks for a cleartext password and records it.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresSink, parsePostgresSinkUri, readPasswordFile } from '../../src/pipeline/sinks/postgres.ts';

let dir: string;
let server: Server;
const passwords: string[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spanfeed-pwfile-'));
  server = createServer((socket) => {
    let buffered = Buffer.alloc(0);
    let started = false;
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (!started && buffered.length >= 4 && buffered.length >= buffered.readInt32BE(0)) {
        started = true;
        buffered = buffered.subarray(buffered.readInt32BE(0));
        // AuthenticationCleartextPassword.
        socket.write(Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 3]));
      }
      if (started && buffered.length >= 5 && buffered[0] === 0x70 && buffered.length >= 1 + buffered.readInt32BE(1)) {
        passwords.push(buffered.subarray(5, 1 + buffered.readInt32BE(1)).toString('utf8').replace(/\u0000$/, ''));
        // ErrorResponse: the test needs only the password.
        const fields = Buffer.from('SFATAL\u0000C28P01\u0000Mdone\u0000\u0000');
        const head = Buffer.alloc(5);
        head.write('E', 0);
        head.writeInt32BE(4 + fields.length, 1);
        socket.end(Buffer.concat([head, fields]));
      }
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

describe('postgres passwordFile', () => {
  it('reads the first line of the file at each connect', async () => {
    const file = join(dir, 'pw');
    writeFileSync(file, 'from-the-file\nignored\n');
    expect(await readPasswordFile(file)).toBe('from-the-file');
    const port = (server.address() as AddressInfo).port;
    const options = parsePostgresSinkUri(`postgres://spanfeed@127.0.0.1:${port}/db?passwordFile=${file}`);
    expect(options.connectionString).not.toContain('passwordFile');
    const sink = new PostgresSink(options);
    const span = { table: 't', start: '', end: '' };
    await expect(sink.write(span, [{ table: 't', key: 'k', value: 'v', op: 'put', ts: 1n }])).rejects.toThrow(/done/);
    writeFileSync(file, 'rotated\n');
    await expect(sink.write(span, [{ table: 't', key: 'k', value: 'v', op: 'put', ts: 2n }])).rejects.toThrow(/done/);
    await sink.close();
    expect(passwords).toEqual(['from-the-file', 'rotated']);
  });

  it('refuses a file that is not a regular file', async () => {
    await expect(readPasswordFile(dir)).rejects.toThrow(/not a regular file/);
  });
});
