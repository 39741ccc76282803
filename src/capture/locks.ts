/**
 * Advisory lock keys, all in one place ("pg2kaf" in ASCII and its neighbours).
 * sql/15_wake.sql repeats WAKE_LOCK as a literal (a trigger cannot import); a test checks
 * that pg2kafka.wake_lock_key() returns this value.
 */
/** Held by node-pg-migrate while versioned migrations run. */
export const MIGRATION_LOCK = 0x7067326b6166;
/** Held (transaction-level) while the repeatable sql/ scripts are applied. */
export const REPEATABLE_SQL_LOCK = 0x7067326b6168;
/** Held exclusively by a relay sleeping on an idle queue; writers notify when they see it. */
export const WAKE_LOCK = 0x7067326b6167;
