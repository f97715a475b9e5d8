// Socket.IO 4 peer for quiver-bench (bench/src/target/socketio.rs speaks to it).
//   join(room, ack)             -> socket joins room, ack()
//   pub(room, payload)          -> io.to(room).emit("msg", room, payload)
//   sync(ack)                   -> ack() (a publisher's "everything before this was handled")
// Websocket transport only, no per-message compression (so it compares to QUIC on equal terms).
// Prints SOCKETIO_READY {"port":N,"version":"4.x.y","node":"vX"} once listening.
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const version = require("socket.io/package.json").version;

const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 0);

const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  maxHttpBufferSize: 1e6,
  serveClient: false,
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack();
  });
  socket.on("pub", (room, payload) => {
    io.to(String(room)).emit("msg", room, payload);
  });
  socket.on("sync", (ack) => {
    if (typeof ack === "function") ack();
  });
});

httpServer.listen(port, host, () => {
  const ready = { port: httpServer.address().port, version, node: process.version };
  process.stdout.write(`SOCKETIO_READY ${JSON.stringify(ready)}\n`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => process.exit(0));
}
