-- Changes to products made outside the service (psql, scripts, other
-- programs) are announced on the channel `catalog_products`
-- (`store::CHANNEL` in the service), which every running instance LISTENs
-- to and turns into a cache invalidation (`store/listen.rs`).
--
-- Payload: {"op": "INSERT"|"UPDATE"|"DELETE", "id": …, "version": …,
-- "category": …, "old_category": …} per row ("version" is the row's version
-- after the change, or the deleted version; "old_category" only for
-- UPDATE), or {"op": "TRUNCATE"} once per TRUNCATE (the service then clears
-- the whole cache). Notifications are sent when the transaction commits, and
-- not at all if it rolls back.
--
-- Contract: sessions whose `application_name` is exactly 'catalog' are the
-- service's own connections, whose writes already invalidate the cache
-- through it, so they are not announced a second time. A script that sets
-- application_name=catalog therefore bypasses invalidation: its changes
-- show through the cache only when the cached copies expire.
CREATE FUNCTION products_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('application_name', true) = 'catalog' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('catalog_products', json_build_object('op', TG_OP)::text);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('catalog_products',
            json_build_object('op', TG_OP, 'id', OLD.id, 'version', OLD.version,
                              'category', OLD.category)::text);
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('catalog_products',
            json_build_object('op', TG_OP, 'id', NEW.id, 'version', NEW.version,
                              'category', NEW.category)::text);
    ELSE
        -- `SET id = DEFAULT` moves a row to a new id: the old one is gone.
        IF OLD.id <> NEW.id THEN
            PERFORM pg_notify('catalog_products',
                json_build_object('op', 'DELETE', 'id', OLD.id, 'version', OLD.version,
                                  'category', OLD.category)::text);
        END IF;
        PERFORM pg_notify('catalog_products',
            json_build_object('op', TG_OP, 'id', NEW.id, 'version', NEW.version,
                              'category', NEW.category, 'old_category', OLD.category)::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER products_notify
    AFTER INSERT OR UPDATE OR DELETE ON products
    FOR EACH ROW EXECUTE FUNCTION products_notify();

-- Row triggers do not fire on TRUNCATE.
CREATE TRIGGER products_notify_truncate
    AFTER TRUNCATE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION products_notify();

-- SPEC §2: `version` goes up by one on every update. The service's own
-- updates do that in their statement; an update made elsewhere that leaves
-- the version alone gets it here, so that ETags and the cache's version
-- guard see the change.
CREATE FUNCTION products_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version = OLD.version THEN
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER products_bump_version
    BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION products_bump_version();
