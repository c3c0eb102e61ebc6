// The PostgreSQL JDBC driver (pgjdbc) through the pooler, with server-side
// named prepared statements: prepareThreshold=1 makes every PreparedStatement
// execution use a named statement (S_1, S_2, ... per connection), and a small
// preparedStatementCacheQueries on odd threads makes the driver evict and
// Close statements, then prepare them again.
//
// Connection: the libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
// PGDATABASE). CLIENTS threads (default 8), one connection each. Exits 0
// only if every check passed; prints each failure otherwise.
//
// Built by install.sh: javac -d classes -cp /usr/share/java/postgresql.jar
// Run: java -cp classes:/usr/share/java/postgresql.jar Jdbc

import java.io.StringReader;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Properties;

import org.postgresql.PGConnection;
import org.postgresql.util.PSQLException;

public class Jdbc {
    static final int CLIENTS = intEnv("CLIENTS", 8);
    static final int ROUNDS = intEnv("ROUNDS", 30);
    static final int TIMEOUT = intEnv("DRIVER_TIMEOUT", 120);
    static final int COPY_ROWS = 200;
    static final String TABLE = "wharf_drv_jdbc_" + ProcessHandle.current().pid();
    static final List<String> failures = Collections.synchronizedList(new ArrayList<>());

    static int intEnv(String name, int dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : Integer.parseInt(v);
    }

    static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : v;
    }

    static void fail(String msg) {
        failures.add(msg);
        System.err.println("FAIL: " + msg);
        System.err.flush();
    }

    static void check(boolean cond, String msg) {
        if (!cond) fail(msg);
    }

    static Connection connect(int cacheQueries) throws SQLException {
        String url = "jdbc:postgresql://" + env("PGHOST", "localhost") + ":" + env("PGPORT", "5432")
                + "/" + env("PGDATABASE", env("PGUSER", "postgres"));
        Properties p = new Properties();
        p.setProperty("user", env("PGUSER", "postgres"));
        String password = System.getenv("PGPASSWORD");
        if (password != null) p.setProperty("password", password);
        p.setProperty("prepareThreshold", "1");
        p.setProperty("preparedStatementCacheQueries", Integer.toString(cacheQueries));
        p.setProperty("connectTimeout", "10");
        return DriverManager.getConnection(url, p);
    }

    static void client(int n) {
        try (Connection conn = connect(n % 2 == 1 ? 3 : 256)) {
            // The same PreparedStatements executed many times.
            try (PreparedStatement sum = conn.prepareStatement("SELECT ?::int + ?::int, ?::text || '!'");
                 PreparedStatement twice = conn.prepareStatement("SELECT ?::bigint * 2")) {
                for (int i = 0; i < ROUNDS; i++) {
                    sum.setInt(1, n);
                    sum.setInt(2, i);
                    sum.setString(3, "c" + n);
                    try (ResultSet rs = sum.executeQuery()) {
                        check(rs.next() && rs.getInt(1) == n + i && rs.getString(2).equals("c" + n + "!")
                                && !rs.next(), "client " + n + " round " + i + ": sum/concat");
                    }
                    twice.setLong(1, i);
                    try (ResultSet rs = twice.executeQuery()) {
                        check(rs.next() && rs.getLong(1) == 2L * i, "client " + n + " round " + i + ": twice");
                    }
                }
            }
            // Distinct statements, prepared anew each round: more than the
            // small cache holds, so the driver Closes and prepares again.
            for (int r = 0; r < 3; r++) {
                for (int k = 0; k < 8; k++) {
                    try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int + " + k)) {
                        ps.setInt(1, r);
                        try (ResultSet rs = ps.executeQuery()) {
                            check(rs.next() && rs.getInt(1) == r + k, "client " + n + " churn " + r + "/" + k);
                        }
                    }
                }
            }
            String insert = "INSERT INTO " + TABLE + " (id, client, val) VALUES (?, ?, ?)";
            // A batch: Bind/Execute pipelined behind one Parse, one Sync.
            try (PreparedStatement ins = conn.prepareStatement(insert)) {
                for (int k = 0; k < 20; k++) {
                    ins.setInt(1, 50000 + n * 100 + k);
                    ins.setInt(2, 2000 + n);
                    ins.setString(3, "b" + k);
                    ins.addBatch();
                }
                int[] counts = ins.executeBatch();
                int total = 0;
                for (int c : counts) total += c;
                check(counts.length == 20 && total == 20, "client " + n + ": batch counts " + total);
            }
            // Transactions: even ones commit, odd ones roll back.
            conn.setAutoCommit(false);
            try (PreparedStatement ins = conn.prepareStatement(insert);
                 PreparedStatement sel = conn.prepareStatement("SELECT val FROM " + TABLE + " WHERE id = ?")) {
                for (int t = 0; t < 10; t++) {
                    int id = n * 1000 + t;
                    ins.setInt(1, id);
                    ins.setInt(2, n);
                    ins.setString(3, "t" + t);
                    check(ins.executeUpdate() == 1, "client " + n + " tx " + t + ": insert count");
                    sel.setInt(1, id);
                    try (ResultSet rs = sel.executeQuery()) {
                        check(rs.next() && rs.getString(1).equals("t" + t), "client " + n + " tx " + t + ": own insert");
                    }
                    if (t % 2 == 1) conn.rollback(); else conn.commit();
                }
                // An error inside a transaction, then a rollback.
                ins.setInt(1, n * 1000);
                ins.setInt(2, n);
                ins.setString(3, "dup");
                try {
                    ins.executeUpdate();
                    fail("client " + n + ": duplicate key accepted");
                } catch (PSQLException e) {
                    check("23505".equals(e.getSQLState()), "client " + n + ": duplicate key gave " + e.getSQLState() + " " + e.getMessage());
                }
                conn.rollback();
            }
            conn.setAutoCommit(true);
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM " + TABLE + " WHERE client = ?")) {
                ps.setInt(1, n);
                try (ResultSet rs = ps.executeQuery()) {
                    String want = String.format("%d,%d,%d,%d,%d", n * 1000, n * 1000 + 2, n * 1000 + 4, n * 1000 + 6, n * 1000 + 8);
                    rs.next();
                    check(rs.getString(1).equals(want), "client " + n + ": committed rows " + rs.getString(1) + ", want " + want);
                }
            }
            // COPY FROM STDIN through the CopyManager.
            StringBuilder data = new StringBuilder();
            int base = 100000 + n * COPY_ROWS;
            for (int i = 0; i < COPY_ROWS; i++) {
                data.append(base + i).append('\t').append(1000 + n).append("\tcopy").append(i).append('\n');
            }
            long copied = conn.unwrap(PGConnection.class).getCopyAPI()
                    .copyIn("COPY " + TABLE + " (id, client, val) FROM STDIN", new StringReader(data.toString()));
            check(copied == COPY_ROWS, "client " + n + ": COPY count " + copied);
            try (PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM " + TABLE + " WHERE client = ?")) {
                ps.setInt(1, 1000 + n);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    check(rs.getLong(1) == COPY_ROWS, "client " + n + ": copied rows counted " + rs.getLong(1));
                }
            }
        } catch (Exception e) {
            fail("client " + n + ": " + e);
        }
    }

    static void exec(String sql) throws SQLException {
        try (Connection conn = connect(256); Statement st = conn.createStatement()) {
            st.execute(sql);
        }
    }

    public static void main(String[] args) throws Exception {
        long started = System.nanoTime();
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(TIMEOUT * 1000L);
                System.err.println("FAIL: JDBC: no result within " + TIMEOUT + "s");
                Runtime.getRuntime().halt(3);
            } catch (InterruptedException e) {
                // done in time
            }
        });
        watchdog.setDaemon(true);
        watchdog.start();
        String version = "?";
        try {
            try (Connection conn = connect(256)) {
                version = conn.getMetaData().getDriverVersion();
            }
            exec("DROP TABLE IF EXISTS " + TABLE);
            exec("CREATE TABLE " + TABLE + " (id int PRIMARY KEY, client int NOT NULL, val text)");
            try {
                List<Thread> threads = new ArrayList<>();
                for (int n = 0; n < CLIENTS; n++) {
                    final int id = n;
                    Thread t = new Thread(() -> client(id));
                    threads.add(t);
                    t.start();
                }
                for (Thread t : threads) t.join();
                try (Connection conn = connect(256); Statement st = conn.createStatement();
                     ResultSet rs = st.executeQuery("SELECT count(*) FILTER (WHERE client < 1000), "
                             + "count(*) FILTER (WHERE client >= 1000 AND client < 2000), "
                             + "count(*) FILTER (WHERE (id % 1000) % 2 = 1 AND client < 1000) FROM " + TABLE)) {
                    rs.next();
                    check(rs.getLong(1) == CLIENTS * 5L && rs.getLong(2) == (long) CLIENTS * COPY_ROWS && rs.getLong(3) == 0,
                            "table totals (committed, copied, rolled back) " + rs.getLong(1) + ", " + rs.getLong(2) + ", " + rs.getLong(3));
                }
            } finally {
                exec("DROP TABLE IF EXISTS " + TABLE);
            }
        } catch (Exception e) {
            fail(e.toString());
        }
        double took = (System.nanoTime() - started) / 1e9;
        if (!failures.isEmpty()) {
            System.err.printf("JDBC %s: %d check(s) failed (%d clients, %.1fs)%n", version, failures.size(), CLIENTS, took);
            System.exit(1);
        }
        System.out.printf("JDBC %s: all checks passed (%d clients, %.1fs)%n", version, CLIENTS, took);
        System.exit(0);
    }
}
