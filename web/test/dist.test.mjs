// dist/ is committed (the Rust server embeds dist/quiver.js without needing Node), so it must be
// exactly what src/ builds to. Fix a failure with `npm run build` and commit dist/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

const web = path.dirname(path.dirname(fileURLToPath(import.meta.url)));

test('dist/ is up to date with src/', async () => {
  const out = await mkdtemp(path.join(tmpdir(), 'quiver-dist-'));
  try {
    await promisify(execFile)(process.execPath, [path.join(web, 'scripts', 'build.mjs'), out], { cwd: web });
    for (const file of ['quiver.js', 'quiver.min.js', 'quiver.min.js.map', 'quiver.d.ts']) {
      const fresh = await readFile(path.join(out, file));
      const committed = await readFile(path.join(web, 'dist', file)).catch(() => Buffer.alloc(0));
      assert.ok(fresh.equals(committed), `web/dist/${file} is stale: run \`npm run build\` in web/ and commit it`);
    }
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
