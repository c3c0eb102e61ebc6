//! SQL-level prepared statements: `PREPARE`, `EXECUTE` and `DEALLOCATE`.
