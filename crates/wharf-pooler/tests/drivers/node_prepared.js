#!/usr/bin/env node
// node-postgres (pg) through the pooler, with server-side named prepared
// statements: a query given a `name` is Parsed once per connection under that
// name and afterwards only Bound and Executed (pg remembers, per connection,
// which names it has parsed and never closes them).
//
// Connection: the libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
// PGDATABASE), which pg reads itself. A Pool of CLIENTS connections (default
// 8) used by CLIENTS concurrent workers. COPY through pg-copy-streams.
// Exits 0 only if every check passed; prints each failure otherwise.
'use strict';

const { pipeline } = require('node:stream/promises');
const { Readable } = require('node:stream');
const pg = require('pg');
const { from: copyFrom } = require('pg-copy-streams');

const CLIENTS = parseInt(process.env.CLIENTS || '8', 10);
const ROUNDS = parseInt(process.env.ROUNDS || '30', 10);
const TIMEOUT = parseInt(process.env.DRIVER_TIMEOUT || '120', 10);
const COPY_ROWS = 200;
const TABLE = `wharf_drv_node_${process.pid}`;

const failures = [];
function fail(msg) {
  failures.push(msg);
  console.error(`FAIL: ${msg}`);
}
function check(cond, msg) {
  if (!cond) fail(msg);
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function worker(pool, n) {
  // Named statements on whichever pool connection the query gets.
  for (let i = 0; i < ROUNDS; i++) {
    const r = await pool.query({
      name: 'sum_concat',
      text: "SELECT $1::int + $2::int AS s, $3::text || '!' AS t",
      values: [n, i, `c${n}`],
    });
    check(same(r.rows, [{ s: n + i, t: `c${n}!` }]), `worker ${n} round ${i}: ${JSON.stringify(r.rows)}`);
  }
  const client = await pool.connect();
  try {
    // The same statements many times on one connection.
    for (let i = 0; i < ROUNDS; i++) {
      const r = await client.query({ name: 'twice', text: 'SELECT $1::int * 2 AS v', values: [i] });
      check(same(r.rows, [{ v: 2 * i }]), `worker ${n} twice ${i}: ${JSON.stringify(r.rows)}`);
      const s = await client.query({ name: 'sum_concat', text: "SELECT $1::int + $2::int AS s, $3::text || '!' AS t", values: [i, n, 'x'] });
      check(same(s.rows, [{ s: n + i, t: 'x!' }]), `worker ${n} sum ${i}: ${JSON.stringify(s.rows)}`);
    }
    // More distinct named statements on this connection.
    for (let k = 0; k < 8; k++) {
      const r = await client.query({ name: `k${k}`, text: `SELECT $1::int + ${k} AS v`, values: [n] });
      check(same(r.rows, [{ v: n + k }]), `worker ${n} distinct ${k}: ${JSON.stringify(r.rows)}`);
    }
    // Transactions: even ones commit, odd ones roll back.
    for (let t = 0; t < 10; t++) {
      const id = n * 1000 + t;
      await client.query('BEGIN');
      await client.query({ name: 'ins', text: `INSERT INTO ${TABLE} (id, client, val) VALUES ($1, $2, $3)`, values: [id, n, `t${t}`] });
      const r = await client.query({ name: 'sel', text: `SELECT val FROM ${TABLE} WHERE id = $1`, values: [id] });
      check(same(r.rows, [{ val: `t${t}` }]), `worker ${n} tx ${t}: own insert reads ${JSON.stringify(r.rows)}`);
      await client.query(t % 2 ? 'ROLLBACK' : 'COMMIT');
    }
    const got = await client.query({
      name: 'ids', text: `SELECT coalesce(array_agg(id ORDER BY id), '{}') AS ids FROM ${TABLE} WHERE client = $1`, values: [n],
    });
    const want = [0, 2, 4, 6, 8].map((t) => n * 1000 + t);
    check(same(got.rows[0].ids, want), `worker ${n}: committed rows ${JSON.stringify(got.rows[0].ids)}, want ${JSON.stringify(want)}`);
    // An error inside a transaction, then a rollback: still usable.
    await client.query('BEGIN');
    try {
      await client.query({ name: 'ins', text: `INSERT INTO ${TABLE} (id, client, val) VALUES ($1, $2, $3)`, values: [n * 1000, n, 'dup'] });
      fail(`worker ${n}: duplicate key accepted`);
    } catch (e) {
      check(e.code === '23505', `worker ${n}: duplicate key gave ${e.code} ${e.message}`);
    }
    await client.query('ROLLBACK');
    const r = await client.query({ name: 'twice', text: 'SELECT $1::int * 2 AS v', values: [21] });
    check(same(r.rows, [{ v: 42 }]), `worker ${n}: after error ${JSON.stringify(r.rows)}`);
    // COPY FROM STDIN.
    const base = 100000 + n * COPY_ROWS;
    const lines = Array.from({ length: COPY_ROWS }, (_, i) => `${base + i}\t${1000 + n}\tcopy${i}\n`);
    const stream = client.query(copyFrom(`COPY ${TABLE} (id, client, val) FROM STDIN`));
    await pipeline(Readable.from(lines), stream);
    check(stream.rowCount === COPY_ROWS, `worker ${n}: COPY rowCount ${stream.rowCount}`);
    const c = await client.query({ name: 'count', text: `SELECT count(*)::int AS c FROM ${TABLE} WHERE client = $1`, values: [1000 + n] });
    check(c.rows[0].c === COPY_ROWS, `worker ${n}: copied rows counted ${c.rows[0].c}`);
  } finally {
    client.release();
  }
}

async function main() {
  const started = Date.now();
  const timer = setTimeout(() => {
    console.error(`FAIL: node-postgres: no result within ${TIMEOUT}s`);
    process.exit(3);
  }, TIMEOUT * 1000);
  const pool = new pg.Pool({ max: CLIENTS, connectionTimeoutMillis: 10000 });
  pool.on('error', (e) => fail(`idle pool connection: ${e.message}`));
  try {
    await pool.query(`DROP TABLE IF EXISTS ${TABLE}`);
    await pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, client int NOT NULL, val text)`);
    try {
      const results = await Promise.allSettled(Array.from({ length: CLIENTS }, (_, n) => worker(pool, n)));
      results.forEach((r, n) => {
        if (r.status === 'rejected') fail(`worker ${n}: ${r.reason && r.reason.stack}`);
      });
      const t = await pool.query(
        `SELECT count(*) FILTER (WHERE client < 1000)::int AS committed, ` +
        `count(*) FILTER (WHERE client >= 1000)::int AS copied, ` +
        `count(*) FILTER (WHERE (id % 1000) % 2 = 1 AND client < 1000)::int AS rolled_back FROM ${TABLE}`,
      );
      const want = { committed: CLIENTS * 5, copied: CLIENTS * COPY_ROWS, rolled_back: 0 };
      check(same(t.rows[0], want), `table totals ${JSON.stringify(t.rows[0])}, want ${JSON.stringify(want)}`);
    } finally {
      await pool.query(`DROP TABLE IF EXISTS ${TABLE}`);
    }
  } catch (e) {
    fail(`${e.stack}`);
  } finally {
    await pool.end().catch(() => {});
    clearTimeout(timer);
  }
  const took = ((Date.now() - started) / 1000).toFixed(1);
  const version = require('pg/package.json').version;
  if (failures.length) {
    console.error(`node-postgres ${version}: ${failures.length} check(s) failed (${CLIENTS} clients, ${took}s)`);
    process.exit(1);
  }
  console.log(`node-postgres ${version}: all checks passed (${CLIENTS} clients, ${took}s)`);
}

main();
