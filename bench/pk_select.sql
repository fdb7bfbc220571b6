\set id random(1, :maxid)
SELECT id, name, description, price, category, in_stock, version, created_at, updated_at FROM products WHERE id = :id;
