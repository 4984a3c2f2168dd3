-- Change tracking for one table on Firebird 3 (or later), installed by `replicator setup`.
-- An isql script: statements end with the current terminator (SET TERM), so a DBA can run it
-- as it is printed by `replicator setup --print`. Placeholders ({table}, {version}, ...) are
-- filled with names quoted by the Firebird dialect.
--
-- {version}: a value of the generator REPLICATOR_VERSION, taken by the triggers below.
--   Generators are not transactional: a transaction that took version 10 may commit after one
--   that took 11 was read. So the first tracked write of every transaction first records, in
--   an autonomous transaction (visible to every reader at once), the lowest version it can
--   take (the generator's value + 1) in REPLICATOR_INFLIGHT. A reader reads the generator
--   *before* its snapshot starts and never reads past the lowest version recorded there by a
--   transaction not yet committed in its snapshot (replicator/backends/firebird.py,
--   docs/firebird.md). The database trigger REPLICATOR_INFLIGHT_END deletes the record in the
--   commit itself; records of transactions that rolled back or died are purged by the reader.
-- {origin}: the node whose replicator wrote the row (NULL for the application's own writes):
--   the replicator sets the context variable USER_TRANSACTION.REPLICATOR_ORIGIN in its own
--   write transactions only, so its writes are not sent back (no echo).
-- An update that changes the key records the old key as deleted (a tombstone), like a delete.
-- The triggers are granted what they write, so an application user without privileges on the
-- replicator's tables still sells.
ALTER TABLE {table} ADD {version} BIGINT;

ALTER TABLE {table} ADD {origin} VARCHAR(200);

CREATE INDEX {version_index} ON {table} ({version}, {key_columns});

SET TERM ^ ;

CREATE OR ALTER TRIGGER {stamp_trigger} FOR {table}
ACTIVE BEFORE INSERT OR UPDATE POSITION 32000
AS
DECLARE floor_version BIGINT;
DECLARE tx BIGINT;
BEGIN
    IF (RDB$GET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_INFLIGHT')
        IS DISTINCT FROM CAST(CURRENT_TRANSACTION AS VARCHAR(20))) THEN
    BEGIN
        tx = CURRENT_TRANSACTION;  -- inside the autonomous transaction it is that one's
        floor_version = GEN_ID(REPLICATOR_VERSION, 0) + 1;
        IN AUTONOMOUS TRANSACTION DO
            UPDATE OR INSERT INTO REPLICATOR_INFLIGHT (TX, FLOOR_VERSION, STARTED_AT)
            VALUES (:tx, :floor_version, CURRENT_TIMESTAMP) MATCHING (TX);
        RDB$SET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_INFLIGHT', :tx);
    END
    IF (RDB$GET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_STAMP') IS NOT NULL) THEN
        NEW.{version} = CAST(RDB$GET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_STAMP') AS BIGINT);
    ELSE
        NEW.{version} = GEN_ID(REPLICATOR_VERSION, 1);
    NEW.{origin} = RDB$GET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_ORIGIN');
    IF (UPDATING) THEN
        IF ({key_changed}) THEN
            INSERT INTO {tombstone_table} ({tomb_columns})
            VALUES ({table_name_literal}, {old_key_json}, NEW.{version}, NEW.{origin});
END^

CREATE OR ALTER TRIGGER {tombstone_trigger} FOR {table}
ACTIVE AFTER DELETE POSITION 32000
AS
DECLARE floor_version BIGINT;
DECLARE tx BIGINT;
BEGIN
    IF (RDB$GET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_INFLIGHT')
        IS DISTINCT FROM CAST(CURRENT_TRANSACTION AS VARCHAR(20))) THEN
    BEGIN
        tx = CURRENT_TRANSACTION;  -- inside the autonomous transaction it is that one's
        floor_version = GEN_ID(REPLICATOR_VERSION, 0) + 1;
        IN AUTONOMOUS TRANSACTION DO
            UPDATE OR INSERT INTO REPLICATOR_INFLIGHT (TX, FLOOR_VERSION, STARTED_AT)
            VALUES (:tx, :floor_version, CURRENT_TIMESTAMP) MATCHING (TX);
        RDB$SET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_INFLIGHT', :tx);
    END
    INSERT INTO {tombstone_table} ({tomb_columns})
    VALUES ({table_name_literal}, {old_key_json}, GEN_ID(REPLICATOR_VERSION, 1),
            RDB$GET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_ORIGIN'));
END^

SET TERM ; ^

GRANT USAGE ON SEQUENCE REPLICATOR_VERSION TO TRIGGER {stamp_trigger};

GRANT USAGE ON SEQUENCE REPLICATOR_VERSION TO TRIGGER {tombstone_trigger};

GRANT SELECT, INSERT, UPDATE ON REPLICATOR_INFLIGHT TO TRIGGER {stamp_trigger};

GRANT SELECT, INSERT, UPDATE ON REPLICATOR_INFLIGHT TO TRIGGER {tombstone_trigger};

GRANT INSERT ON {tombstone_table} TO TRIGGER {stamp_trigger};

GRANT INSERT ON {tombstone_table} TO TRIGGER {tombstone_trigger};

-- Rows that existed before tracking get one version (REPLICATOR_STAMP tells the trigger
-- which), taken after this transaction is recorded as in flight like any writer's.
SET TERM ^ ;

EXECUTE BLOCK AS
DECLARE floor_version BIGINT;
DECLARE tx BIGINT;
DECLARE v BIGINT;
BEGIN
    IF (EXISTS (SELECT 1 FROM {table} WHERE {version} IS NULL)) THEN
    BEGIN
        tx = CURRENT_TRANSACTION;
        floor_version = GEN_ID(REPLICATOR_VERSION, 0) + 1;
        IN AUTONOMOUS TRANSACTION DO
            UPDATE OR INSERT INTO REPLICATOR_INFLIGHT (TX, FLOOR_VERSION, STARTED_AT)
            VALUES (:tx, :floor_version, CURRENT_TIMESTAMP) MATCHING (TX);
        RDB$SET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_INFLIGHT', :tx);
        v = GEN_ID(REPLICATOR_VERSION, 1);
        RDB$SET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_STAMP', :v);
        UPDATE {table} SET {version} = :v WHERE {version} IS NULL;
        RDB$SET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_STAMP', NULL);
    END
END^

SET TERM ; ^
