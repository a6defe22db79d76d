// The example app: /api/health answers when the database (through PgBouncer) and Redis
// do; / says who it runs as and what the migrations made. Stops cleanly on SIGTERM.
const http = require('http');
const net = require('net');
const { Pool } = require('pg');

const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 2 });

// PING over RESP, with AUTH when REDIS_PASSWORD is set (no client library needed).
function redisPing() {
  const url = process.env.REDIS_URL;
  if (!url) return Promise.resolve();
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(u.port || 6379), u.hostname);
    const pw = process.env.REDIS_PASSWORD;
    let cmd = '';
    if (pw) cmd += `*2\r\n$4\r\nAUTH\r\n$${Buffer.byteLength(pw)}\r\n${pw}\r\n`;
    cmd += '*1\r\n$4\r\nPING\r\n';
    let buf = '';
    s.setTimeout(2000, () => { s.destroy(); reject(new Error('redis timeout')); });
    s.on('data', (d) => {
      buf += d;
      if (buf.includes('PONG')) { s.end(); resolve(); }
      else if (buf.includes('-')) { s.end(); reject(new Error('redis refused')); }
    });
    s.on('error', reject);
    s.write(cmd);
  });
}

const server = http.createServer(async (req, res) => {
  try {
    if (req.url === '/api/health') {
      await pool.query('SELECT 1');
      await redisPing();
      res.end('ok\n');
      return;
    }
    const r = await pool.query(
      "SELECT current_user AS db_user, (SELECT count(*) FROM drizzle.__drizzle_migrations) AS migrations"
    );
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ uid: process.getuid(), ...r.rows[0] }) + '\n');
  } catch (e) {
    res.statusCode = 503;
    res.end('unavailable\n');
  }
});

server.listen(3000, () => console.log('listening on 3000'));

process.on('SIGTERM', () => {
  server.close(() => pool.end().then(() => process.exit(0)));
});
