// Public entry point: bundled into dist/quiver.js, which the server serves at /quiver.js.
export * from './codec.js';
export * from './codes.js';
export * from './client.js';
