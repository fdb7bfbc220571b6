-- Products: the catalog's only table. SQLite has no exact decimal type, so
-- prices are integer cents; timestamps are RFC 3339 text with microseconds.
CREATE TABLE products (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description TEXT    NOT NULL DEFAULT '' CHECK (length(description) <= 10000),
    price_cents INTEGER NOT NULL CHECK (price_cents BETWEEN 0 AND 100000000000),
    category    TEXT    NOT NULL CHECK (length(category) BETWEEN 1 AND 100),
    in_stock    INTEGER NOT NULL DEFAULT 1 CHECK (in_stock IN (0, 1)),
    created_at  TEXT    NOT NULL,
    updated_at  TEXT,
    version     INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1)
);

-- Keyset pages within a category walk (category, id) in order.
CREATE INDEX products_category_id_idx ON products (category, id);
CREATE INDEX products_name_idx ON products (name);
