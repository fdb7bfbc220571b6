-- Products: the catalog's only table. Prices are exact decimals; `version`
-- starts at 1 and every update increments it (the ETag is built from it).
CREATE TABLE products (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT           NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    description TEXT           NOT NULL DEFAULT '' CHECK (char_length(description) <= 10000),
    price       NUMERIC(12, 2) NOT NULL CHECK (price >= 0 AND price <= 1000000000),
    category    TEXT           NOT NULL CHECK (char_length(category) BETWEEN 1 AND 100),
    in_stock    BOOLEAN        NOT NULL DEFAULT TRUE,
    created_at  TIMESTAMPTZ    NOT NULL,
    updated_at  TIMESTAMPTZ,
    version     BIGINT         NOT NULL DEFAULT 1 CHECK (version >= 1)
);

-- Keyset pages within a category walk (category, id) in order.
CREATE INDEX products_category_id_idx ON products (category, id);
CREATE INDEX products_name_idx ON products (name);
