-- Change tracking for one table on MariaDB (or MySQL 8), installed by `replicator setup`.
-- Placeholders ({table}, {version}, ...) are filled with identifiers quoted by the dialect.
-- Run by hand in the `mariadb` client, the printed script wraps each trigger in DELIMITER $$.
-- Privileges: ALTER, INDEX and TRIGGER on the table; SELECT, INSERT, UPDATE on the clock and
--   tombstone tables for the application's own user (its triggers write them).
--
-- {version}: a counter in the clock table ({clock_table}, one row), bumped by the triggers of
--   every tracked write. The UPDATE of that row takes InnoDB's row lock until the writing
--   transaction ends, so the next writer of any tracked table waits for it: versions are taken
--   in commit order, like SQLite's single writer. A reader's snapshot then holds every row
--   whose version is <= the clock value it sees (the bound), and a transaction that is still
--   open has no version in that range. No gap tracking is needed. (A sequence or an
--   AUTO_INCREMENT would let a long transaction that took 10 commit after one that took 11
--   was already read: the row with 10 would be lost without gap tracking.) The price: tracked
--   writers of one database take turns for the rest of their transaction (a POS register
--   writes one sale at a time anyway).
-- {origin}: the node whose replicator wrote the row (NULL for the application's own writes):
--   the replicator sets the session variable @replicator_origin in its write transactions and
--   clears it after, so its writes are not sent back to where they came from (no echo).
-- MariaDB triggers cannot update their own table: BEFORE INSERT/UPDATE triggers set NEW.
-- CREATE OR REPLACE TRIGGER replaces a trigger in one step: a `setup` run again on a store
--   that sells never leaves a moment without it (DROP TRIGGER then CREATE TRIGGER would: a
--   write in between would get no version and no tombstone, and never be replicated).
-- An update that changes the key records the old key as deleted. REPLACE INTO fires the
--   delete trigger for the row it displaces. Foreign key cascades (ON DELETE CASCADE) fire no
--   triggers in InnoDB: rows deleted by a cascade are not seen; see docs/mariadb.md.
-- INVISIBLE: `SELECT *` and `INSERT INTO t VALUES (...)` without a column list, as a POS
--   application may write them, see the table as it was before setup (MariaDB 10.3+).
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {version} BIGINT NULL INVISIBLE,
    ADD COLUMN IF NOT EXISTS {origin} VARCHAR(200) NULL INVISIBLE;

-- The rows that are there before tracking: one version for all of them.
UPDATE {clock_table} SET {clock_version} = {clock_version} + 1
 WHERE id = 1 AND EXISTS (SELECT 1 FROM {table} WHERE {version} IS NULL);

UPDATE {table} SET {version} = (SELECT {clock_version} FROM {clock_table} WHERE id = 1)
 WHERE {version} IS NULL;

CREATE INDEX IF NOT EXISTS {version_index} ON {table} ({version}, {key_columns});

CREATE OR REPLACE TRIGGER {insert_trigger} BEFORE INSERT ON {table} FOR EACH ROW
BEGIN
    UPDATE {clock_table} SET {clock_version} = {clock_version} + 1 WHERE id = 1;
    SET NEW.{version} = (SELECT {clock_version} FROM {clock_table} WHERE id = 1);
    SET NEW.{origin} = @replicator_origin;
END;

CREATE OR REPLACE TRIGGER {update_trigger} BEFORE UPDATE ON {table} FOR EACH ROW
BEGIN
    UPDATE {clock_table} SET {clock_version} = {clock_version} + 1 WHERE id = 1;
    SET NEW.{version} = (SELECT {clock_version} FROM {clock_table} WHERE id = 1);
    SET NEW.{origin} = @replicator_origin;
    IF {key_changed} THEN
        INSERT INTO {tombstone_table} (table_name, {tombstone_key}, version, origin)
        VALUES ({table_name_literal}, JSON_ARRAY({old_key_columns}), NEW.{version},
                NEW.{origin});
    END IF;
END;

CREATE OR REPLACE TRIGGER {tombstone_trigger} AFTER DELETE ON {table} FOR EACH ROW
BEGIN
    UPDATE {clock_table} SET {clock_version} = {clock_version} + 1 WHERE id = 1;
    INSERT INTO {tombstone_table} (table_name, {tombstone_key}, version, origin)
    VALUES ({table_name_literal}, JSON_ARRAY({old_key_columns}),
            (SELECT {clock_version} FROM {clock_table} WHERE id = 1), @replicator_origin);
END;

-- DDL commits by itself in MariaDB: a row written between the stamping above and the
-- creation of the triggers has no version yet. The update trigger stamps each such row.
UPDATE {table} SET {version} = NULL WHERE {version} IS NULL;
