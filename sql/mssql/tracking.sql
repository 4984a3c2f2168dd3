-- Change tracking for one table on SQL Server 2022 or later (JSON_ARRAY), installed by
-- `replicator setup`. NOT TESTED AGAINST A LIVE SERVER (see docs/sqlserver.md).
-- Placeholders ({table}, {version}, ...) are filled with identifiers quoted by the dialect.
-- Printed by `setup --print`, each statement is its own batch (GO).
--
-- {version}: a rowversion column: SQL Server stamps it on every insert and update itself.
--   A read takes only rows below MIN_ACTIVE_ROWVERSION(), read before its SNAPSHOT
--   transaction starts: every row under it is committed, so a long transaction's late commit
--   is never skipped.
-- {origin}: the node whose replicator wrote the row (NULL for the application's own writes),
--   from SESSION_CONTEXT(N'replicator_origin'), which the replicator sets in its write
--   transactions (no echo).
-- Deletes, and keys changed by an update, go to the tombstone table; a tombstone's version is
--   the rowversion its own row got, taken inside the deleting transaction.
IF COL_LENGTH({table_literal}, {version_literal}) IS NULL
    ALTER TABLE {table} ADD {version} rowversion;

IF COL_LENGTH({table_literal}, {origin_literal}) IS NULL
    ALTER TABLE {table} ADD {origin} nvarchar(200) NULL;

IF NOT EXISTS (SELECT 1 FROM sys.indexes
                WHERE name = {index_literal} AND object_id = OBJECT_ID({table_literal}))
    CREATE INDEX {version_index} ON {table} ({version}, {key_columns});

CREATE OR ALTER TRIGGER {stamp_trigger} ON {table} AFTER INSERT, UPDATE AS
BEGIN
    SET NOCOUNT ON;
    DECLARE @origin nvarchar(200) = CAST(SESSION_CONTEXT(N'replicator_origin') AS nvarchar(200));
    DECLARE @ids TABLE (id bigint PRIMARY KEY);
    UPDATE t SET {origin} = @origin
      FROM {table} AS t JOIN inserted AS i ON {key_match_inserted}
     WHERE NOT (t.{origin} = @origin OR (t.{origin} IS NULL AND @origin IS NULL));
    INSERT INTO {tombstone_table} (table_name, [key], version, origin)
    OUTPUT inserted.id INTO @ids
    SELECT {table_name_literal}, JSON_ARRAY({deleted_key_columns} NULL ON NULL), 0, @origin
      FROM deleted AS d
     WHERE NOT EXISTS (SELECT 1 FROM inserted AS i WHERE {key_match_deleted});
    UPDATE t SET version = CAST(t.stamp AS bigint)
      FROM {tombstone_table} AS t JOIN @ids AS n ON t.id = n.id;
END;

CREATE OR ALTER TRIGGER {tombstone_trigger} ON {table} AFTER DELETE AS
BEGIN
    SET NOCOUNT ON;
    DECLARE @ids TABLE (id bigint PRIMARY KEY);
    INSERT INTO {tombstone_table} (table_name, [key], version, origin)
    OUTPUT inserted.id INTO @ids
    SELECT {table_name_literal}, JSON_ARRAY({deleted_key_columns} NULL ON NULL), 0,
           CAST(SESSION_CONTEXT(N'replicator_origin') AS nvarchar(200))
      FROM deleted AS d;
    UPDATE t SET version = CAST(t.stamp AS bigint)
      FROM {tombstone_table} AS t JOIN @ids AS n ON t.id = n.id;
END;
