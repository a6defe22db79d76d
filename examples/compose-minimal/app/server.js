// The example app: /api/health answers when the database does; / says who it runs as
// and what the migrations made. Stops cleanly on SIGTERM (exit 0).
const http = require('http');
const { Pool } = require('pg');

const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 2 });

const server = http.createServer(async (req, res) => {
  try {
    if (req.url === '/api/health') {
      await pool.query('SELECT 1');
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
    res.end('database unavailable\n');
  }
});

server.listen(3000, () => console.log('listening on 3000'));

process.on('SIGTERM', () => {
  server.close(() => pool.end().then(() => process.exit(0)));
});
