-- Change tracking for one table on PostgreSQL, installed by `replicator setup`.
-- Placeholders ({table}, {version}, ...) are filled with quoted identifiers by the replicator;
-- {dollar} is a dollar quote ($repl_<8 hex>$) that occurs nowhere in the filled bodies.
--
-- {version}: the id of the writing transaction (pg_current_xact_id, xid8, as bigint). A reader
--   takes only rows whose id is below the oldest transaction of this database still running
--   in its snapshot (SAFE_BOUND in replicator/backends/postgresql.py): every such transaction
--   has ended, so a late commit of an old transaction is never skipped.
-- {origin}: the node whose replicator wrote the row (NULL for the application's own writes);
--   the replicator sets it per transaction with set_config('replicator.origin', ..., true) so
--   its writes are not sent back to where they came from (no echo).
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {version} bigint;

ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {origin} text;

UPDATE {table} SET {version} = pg_current_xact_id()::text::bigint WHERE {version} IS NULL;

CREATE INDEX IF NOT EXISTS {version_index} ON {table} ({version}, {key_columns});

CREATE OR REPLACE FUNCTION {stamp_function}() RETURNS trigger LANGUAGE plpgsql AS {dollar}
BEGIN
    NEW.{version} := pg_current_xact_id()::text::bigint;
    NEW.{origin} := nullif(current_setting('replicator.origin', true), '');
    IF TG_OP = 'UPDATE' AND ({key_changed}) THEN
        -- the key changed: the old key is gone for the targets
        INSERT INTO {tombstone_table} (table_name, key, version, origin)
        VALUES ({table_name_literal}, jsonb_build_array({old_key_columns}), NEW.{version},
                NEW.{origin});
    END IF;
    RETURN NEW;
END
{dollar};

CREATE OR REPLACE FUNCTION {tombstone_function}() RETURNS trigger LANGUAGE plpgsql AS {dollar}
BEGIN
    INSERT INTO {tombstone_table} (table_name, key, version, origin)
    VALUES ({table_name_literal}, jsonb_build_array({old_key_columns}),
            pg_current_xact_id()::text::bigint,
            nullif(current_setting('replicator.origin', true), ''));
    RETURN OLD;
END
{dollar};

DROP TRIGGER IF EXISTS {stamp_trigger} ON {table};

CREATE TRIGGER {stamp_trigger} BEFORE INSERT OR UPDATE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {stamp_function}();

DROP TRIGGER IF EXISTS {tombstone_trigger} ON {table};

CREATE TRIGGER {tombstone_trigger} AFTER DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {tombstone_function}();
