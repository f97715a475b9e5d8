// Builds from src/: dist/quiver.js (one self-contained, readable ES module), dist/quiver.min.js
// with its source map dist/quiver.min.js.map, and dist/quiver.d.ts.
// Usage: node scripts/build.mjs [outdir]   (default: dist). The output is committed: the Rust
// server embeds dist/quiver.js, so building the server never needs Node.
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { build } from 'esbuild';
import { generateDtsBundle } from 'dts-bundle-generator';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const outdir = path.resolve(process.argv[2] ?? path.join(root, 'dist'));
const entry = path.join(root, 'src', 'index.ts');
const banner = '// Quiver WebTransport client. Generated from web/src by `npm run build`: do not edit.\n';

await mkdir(outdir, { recursive: true });

const js = await build({
  entryPoints: [entry],
  bundle: true,
  format: 'esm',
  target: 'es2022',
  platform: 'neutral',
  // Readable output: the file is served as-is and read in browser devtools.
  minify: false,
  legalComments: 'none',
  charset: 'utf8',
  write: false,
  logLevel: 'warning',
});
const [out] = js.outputFiles;
await writeFile(path.join(outdir, 'quiver.js'), banner + out.text);

// The minified bundle for the npm package and for pages that load it directly. Its nominal path
// is always dist/, so the source map (sources relative to it, contents inlined) is the same
// whatever directory this run writes to.
const min = await build({
  entryPoints: [entry],
  bundle: true,
  format: 'esm',
  target: 'es2022',
  platform: 'neutral',
  minify: true,
  sourcemap: 'linked',
  sourcesContent: true,
  legalComments: 'none',
  charset: 'utf8',
  outfile: path.join(root, 'dist', 'quiver.min.js'),
  absWorkingDir: root,
  write: false,
  logLevel: 'warning',
});
for (const file of min.outputFiles) await writeFile(path.join(outdir, path.basename(file.path)), file.contents);

const [dts] = generateDtsBundle([{ filePath: entry, output: { noBanner: true, exportReferencedTypes: false } }], {
  preferredConfigPath: path.join(root, 'tsconfig.json'),
});
await writeFile(path.join(outdir, 'quiver.d.ts'), banner + dts);
