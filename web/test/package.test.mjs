// The npm package as a user gets it: `npm pack`, install the tarball into a fresh project,
// import it there (both entry points), and type-check a TypeScript file against its types.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const run = promisify(execFile);
const web = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const manifest = JSON.parse(await readFile(path.join(web, 'package.json'), 'utf8'));

test('npm pack: the tarball installs into a fresh project and imports there', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'quiver-pack-'));
  try {
    const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: web });
    const [packed] = JSON.parse(stdout);
    const files = packed.files.map((f) => f.path).sort();
    assert.deepEqual(files, ['README.md', 'dist/quiver.d.ts', 'dist/quiver.js', 'dist/quiver.min.js', 'dist/quiver.min.js.map', 'package.json']);
    assert.equal(packed.name, manifest.name);
    assert.ok(!manifest.private, 'publishable');

    const project = path.join(dir, 'app');
    await run('mkdir', ['-p', project]);
    await writeFile(path.join(project, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }));
    // No dependencies: the install needs no registry.
    await run('npm', ['install', '--offline', '--no-audit', '--no-fund', path.join(dir, packed.filename)], { cwd: project });

    await writeFile(
      path.join(project, 'main.mjs'),
      `import * as q from '${manifest.name}';
import * as min from '${manifest.name}/min';
const out = {};
for (const [name, m] of [['full', q], ['min', min]]) {
  const frame = m.encodeCommand({ id: 7, command: { type: 'Ping' } });
  out[name] = {
    client: typeof m.QuiverClient,
    connect: typeof m.connect,
    frame: [...frame],
    label: m.codeLabel(3007),
    error: new m.QuiverError('auth', 'x', { code: 3007 }).label,
  };
}
console.log(JSON.stringify(out));
`,
    );
    const { stdout: printed } = await run(process.execPath, ['main.mjs'], { cwd: project });
    const out = JSON.parse(printed);
    for (const name of ['full', 'min']) {
      assert.deepEqual(out[name], { client: 'function', connect: 'function', frame: [0, 0, 0, 2, 7, 4], label: 'token_invalid', error: 'token_invalid' }, name);
    }

    // The types resolve through `exports` for a TypeScript user, and catch a misuse.
    await writeFile(
      path.join(project, 'main.ts'),
      `import { QuiverClient, type TransportKind } from '${manifest.name}';
const client = new QuiverClient({ url: 'https://example.com/v1', token: () => 'jwt', transports: ['websocket'] });
const kind: TransportKind | null = client.transport;
client.on('transport', (t: TransportKind) => console.log(t, kind));
// @ts-expect-error: not a transport
new QuiverClient({ url: 'https://example.com/v1', token: () => 'jwt', transports: ['carrier-pigeon'] });
`,
    );
    await writeFile(
      path.join(project, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { strict: true, noEmit: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', lib: ['ES2022', 'DOM'], skipLibCheck: false }, files: ['main.ts'] }),
    );
    await run(process.execPath, [path.join(web, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', project]).catch((e) => {
      throw new Error(`tsc in the fresh project failed:\n${e.stdout}${e.stderr}`);
    });

    const minified = await readFile(path.join(project, 'node_modules', ...manifest.name.split('/'), 'dist', 'quiver.min.js'));
    const gzipped = gzipSync(minified, { level: 9 }).length;
    console.log(`# package: ${packed.filename}, ${packed.size} B packed; quiver.min.js ${minified.length} B, ${gzipped} B gzipped`);
    // The READMEs state the size: they must stay within 5 % of the truth.
    for (const file of [path.join(web, 'README.md'), path.join(web, '..', 'README.md')]) {
      const stated = /\*\*([\d.]+) kB(?: minified)?, ([\d.]+) kB min\+gzip\*\*/.exec(await readFile(file, 'utf8'));
      assert.ok(stated, `${file} states the minified and gzipped size`);
      for (const [claim, actual] of [[Number(stated[1]) * 1000, minified.length], [Number(stated[2]) * 1000, gzipped]]) {
        assert.ok(Math.abs(claim - actual) / actual < 0.05, `${file} says ${claim} B, the bundle is ${actual} B: update it`);
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
