-- Database-wide objects of change tracking on Firebird 3 (or later), installed by
-- `replicator setup` before the control tables. An isql script (SET TERM): run it as the
-- database owner or SYSDBA (database triggers need one of them).
--
-- REPLICATOR_VERSION: the generator every tracked write takes its version from.
-- REPLICATOR_INFLIGHT: per writing transaction not yet committed, the lowest version it can
--   have taken (see tracking.sql). Written by the tracking triggers in autonomous
--   transactions; the row of a transaction is deleted by its own commit
--   (REPLICATOR_INFLIGHT_END), or by the replicator once the transaction is seen ended
--   (rolled back, or its connection died).
-- REPLICATOR_JOBLOCK: one row per job; the replicator's write transaction updates it first,
--   so two services writing the same job take turns (lock conflict: the second skips a turn).
SET TERM ^ ;

EXECUTE BLOCK AS
BEGIN
    IF (NOT EXISTS (SELECT 1 FROM RDB$GENERATORS
                     WHERE RDB$GENERATOR_NAME = 'REPLICATOR_VERSION')) THEN
        EXECUTE STATEMENT 'CREATE SEQUENCE REPLICATOR_VERSION';
END^

EXECUTE BLOCK AS
BEGIN
    IF (NOT EXISTS (SELECT 1 FROM RDB$RELATIONS
                     WHERE RDB$RELATION_NAME = 'REPLICATOR_INFLIGHT')) THEN
        EXECUTE STATEMENT 'CREATE TABLE REPLICATOR_INFLIGHT (
            TX BIGINT NOT NULL PRIMARY KEY,
            FLOOR_VERSION BIGINT NOT NULL,
            STARTED_AT TIMESTAMP NOT NULL)';
END^

EXECUTE BLOCK AS
BEGIN
    IF (NOT EXISTS (SELECT 1 FROM RDB$RELATIONS
                     WHERE RDB$RELATION_NAME = 'REPLICATOR_JOBLOCK')) THEN
        EXECUTE STATEMENT 'CREATE TABLE REPLICATOR_JOBLOCK (
            JOB VARCHAR(200) CHARACTER SET UTF8 NOT NULL PRIMARY KEY,
            LOCKED_AT TIMESTAMP)';
END^

CREATE OR ALTER TRIGGER REPLICATOR_INFLIGHT_END
ACTIVE ON TRANSACTION COMMIT POSITION 32000
AS
BEGIN
    IF (RDB$GET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_INFLIGHT') IS NOT NULL) THEN
        DELETE FROM REPLICATOR_INFLIGHT
         WHERE TX = CAST(RDB$GET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_INFLIGHT') AS BIGINT);
END^

SET TERM ; ^

GRANT DELETE, SELECT ON REPLICATOR_INFLIGHT TO TRIGGER REPLICATOR_INFLIGHT_END;
