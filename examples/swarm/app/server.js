// The example app for Swarm: GET / updates and returns a row through PgBouncer, /slow
// does the same after 200 ms (a request still in flight when a task stops), and
// /api/health answers when the database does. Each answer names APP_VERSION.
//
// Shutdown without losing a request. The entrypoint passes SIGTERM on after
// --stop-delay, when Swarm has long removed this task from DNS; then the server stops
// accepting, finishes what is in flight, answers every request still arriving on a
// kept-alive connection with `Connection: close` (its client reconnects, to another
// task), closes the connections that stay idle after a second, and exits once none
// is left.
const http = require('http');
const net = require('net');
const { Pool } = require('pg');

const version = process.env.APP_VERSION || 'dev';
const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
let stopping = false;

function send(res, status, type, body) {
  res.statusCode = status;
  res.setHeader('content-type', type);
  if (stopping) res.setHeader('connection', 'close');
  res.end(body);
}

const server = http.createServer(async (req, res) => {
  try {
    if (req.url === '/api/health') {
      await pool.query('SELECT 1');
      send(res, 200, 'text/plain', 'ok\n');
      return;
    }
    if (req.url === '/slow') await new Promise((r) => setTimeout(r, 200));
    const id = 1 + Math.floor(Math.random() * 20000);
    const r = await pool.query('UPDATE items SET hits = hits + 1 WHERE id = $1 RETURNING name', [id]);
    const body = { version, uid: process.getuid(), item: r.rows[0] && r.rows[0].name };
    send(res, 200, 'application/json', JSON.stringify(body) + '\n');
  } catch (e) {
    send(res, 503, 'text/plain', 'unavailable\n');
  }
});

server.listen(3000, () => console.log(`version ${version} listening on 3000`));

process.on('SIGTERM', () => {
  stopping = true;
  // net's close, not http's: http's also drops idle kept-alive connections at once,
  // racing a request already on its way on one of them.
  net.Server.prototype.close.call(server, () => pool.end().then(() => process.exit(0)));
  setTimeout(() => server.closeIdleConnections(), 1000).unref();
});
