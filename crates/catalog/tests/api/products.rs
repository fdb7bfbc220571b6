//! Every product endpoint and every input rule of SPEC §3, on both stores.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_problem, both_stores};

both_stores!(
    create_returns_201_with_location_etag_and_the_product,
    get_returns_exactly_what_create_returned,
    get_of_an_absent_product_is_404_problem,
    bad_ids_in_the_path_are_400,
    if_none_match_with_the_current_etag_is_304,
    put_replaces_every_field_and_increments_the_version,
    put_with_a_stale_etag_is_412_and_changes_nothing,
    patch_changes_only_the_given_fields,
    patch_without_fields_or_with_null_is_422,
    delete_returns_204_then_404,
    every_invalid_field_is_422_naming_it,
    a_nul_character_is_422_naming_the_field_and_changes_nothing,
    malformed_json_is_400,
    a_body_that_is_not_json_is_415,
    a_body_over_64_kib_is_413,
    writes_without_a_valid_token_are_401,
    batch_get_returns_items_in_order_and_the_missing_ids,
    batch_get_rejects_bad_and_too_many_ids,
    pages_walk_every_product_once_in_id_order,
    pages_filter_by_category,
    bad_page_parameters_are_400,
    unknown_routes_and_methods_are_problems,
    health_reports_the_store_up,
    openapi_document_lists_every_route,
    openapi_document_describes_what_the_service_accepts,
    prices_round_trip_exactly,
    store_gone_is_503_without_internals,
);

fn widget() -> Value {
    json!({"name": "Widget", "description": "A widget", "price": 19.99,
           "category": "tools", "in_stock": true})
}

async fn create_returns_201_with_location_etag_and_the_product(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let response = app.create(widget()).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_i64().unwrap();
    assert!(id > 0);
    assert_eq!(location, format!("/products/{id}"));
    assert_eq!(etag, format!("\"{id}-1\""));
    assert_eq!(body["name"], "Widget");
    assert_eq!(body["description"], "A widget");
    assert_eq!(body["price"], json!(19.99));
    assert_eq!(body["category"], "tools");
    assert_eq!(body["in_stock"], true);
    assert_eq!(body["version"], 1);
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["updated_at"], Value::Null);
}

async fn get_returns_exactly_what_create_returned(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created = app.create_product("  Trimmed name  ", "tools", 5.5).await;
    let id = created["id"].as_i64().unwrap();

    let response = app.get(&format!("/products/{id}")).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-cache"], "MISS");
    assert_eq!(response.headers()["etag"], format!("\"{id}-1\"").as_str());
    let fetched: Value = response.json().await.unwrap();
    assert_eq!(fetched, created);
    assert_eq!(fetched["name"], "Trimmed name");

    let patched: Value = app
        .send_json(
            Method::PATCH,
            &format!("/products/{id}"),
            &json!({"in_stock": false}),
        )
        .await
        .json()
        .await
        .unwrap();
    let fetched: Value = app.get_json(&format!("/products/{id}")).await;
    assert_eq!(fetched, patched);
    assert!(fetched["updated_at"].is_string());
}

async fn get_of_an_absent_product_is_404_problem(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let body = assert_problem(app.get("/products/424242").await, StatusCode::NOT_FOUND).await;

    assert!(body["detail"].as_str().unwrap().contains("424242"));
}

async fn bad_ids_in_the_path_are_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    for bad in ["abc", "0", "-1", "1.5", "99999999999999999999", "%20"] {
        let path = format!("/products/{bad}");
        assert_problem(app.get(&path).await, StatusCode::BAD_REQUEST).await;
        let put = app.send_json(Method::PUT, &path, &widget()).await;
        assert_problem(put, StatusCode::BAD_REQUEST).await;
        let delete = app.delete(&path).await;
        assert_problem(delete, StatusCode::BAD_REQUEST).await;
    }
}

async fn if_none_match_with_the_current_etag_is_304(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app.create_product_id("Cached", "tools", 1.0).await;
    let path = format!("/products/{id}");
    let etag = format!("\"{id}-1\"");

    let not_modified = app
        .request(Method::GET, &path)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    let weak_in_list = app
        .request(Method::GET, &path)
        .header("if-none-match", format!("\"x\", W/{etag}"))
        .send()
        .await
        .unwrap();
    let stale = app
        .request(Method::GET, &path)
        .header("if-none-match", format!("\"{id}-0\""))
        .send()
        .await
        .unwrap();

    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"], etag.as_str());
    assert!(not_modified.bytes().await.unwrap().is_empty());
    assert_eq!(weak_in_list.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(stale.status(), StatusCode::OK);
}

async fn put_replaces_every_field_and_increments_the_version(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created = app.create_product("Old", "tools", 1.0).await;
    let id = created["id"].as_i64().unwrap();

    let response = app
        .send_json(
            Method::PUT,
            &format!("/products/{id}"),
            &json!({"name": "New", "price": 2.25, "category": "garden"}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], format!("\"{id}-2\"").as_str());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], "New");
    assert_eq!(body["description"], "", "PUT is a full replace");
    assert_eq!(body["price"], json!(2.25));
    assert_eq!(body["category"], "garden");
    assert_eq!(body["in_stock"], true);
    assert_eq!(body["version"], 2);
    assert_eq!(body["created_at"], created["created_at"]);
    assert!(body["updated_at"].is_string());
    let absent = app
        .send_json(Method::PUT, "/products/987654", &widget())
        .await;
    assert_problem(absent, StatusCode::NOT_FOUND).await;
}

async fn put_with_a_stale_etag_is_412_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app.create_product_id("Versioned", "tools", 1.0).await;
    let path = format!("/products/{id}");
    let current = app
        .authed(Method::PUT, &path)
        .header("if-match", format!("\"{id}-1\""))
        .json(&widget())
        .send()
        .await
        .unwrap();
    assert_eq!(current.status(), StatusCode::OK);

    let stale = app
        .authed(Method::PUT, &path)
        .header("if-match", format!("\"{id}-1\""))
        .json(&json!({"name": "Lost update", "price": 1, "category": "x"}))
        .send()
        .await
        .unwrap();
    let stale_patch = app
        .authed(Method::PATCH, &path)
        .header("if-match", format!("\"{id}-1\""))
        .json(&json!({"name": "Lost update"}))
        .send()
        .await
        .unwrap();
    let stale_delete = app
        .authed(Method::DELETE, &path)
        .header("if-match", format!("\"{id}-1\""))
        .send()
        .await
        .unwrap();

    assert_problem(stale, StatusCode::PRECONDITION_FAILED).await;
    assert_problem(stale_patch, StatusCode::PRECONDITION_FAILED).await;
    assert_problem(stale_delete, StatusCode::PRECONDITION_FAILED).await;
    let body: Value = app.get_json(&path).await;
    assert_eq!(body["name"], "Widget");
    assert_eq!(body["version"], 2);
}

async fn patch_changes_only_the_given_fields(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created = app.create_product("Patchable", "tools", 3.0).await;
    let id = created["id"].as_i64().unwrap();

    let response = app
        .send_json(
            Method::PATCH,
            &format!("/products/{id}"),
            &json!({"price": 4.5, "in_stock": false}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["price"], json!(4.5));
    assert_eq!(body["in_stock"], false);
    assert_eq!(body["name"], created["name"]);
    assert_eq!(body["description"], created["description"]);
    assert_eq!(body["category"], created["category"]);
    assert_eq!(body["version"], 2);
    let absent = app
        .send_json(Method::PATCH, "/products/987654", &json!({"price": 1}))
        .await;
    assert_problem(absent, StatusCode::NOT_FOUND).await;
}

async fn patch_without_fields_or_with_null_is_422(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app.create_product_id("Patchable", "tools", 3.0).await;
    let path = format!("/products/{id}");

    let empty = app.send_json(Method::PATCH, &path, &json!({})).await;
    let null = app
        .send_json(Method::PATCH, &path, &json!({"name": null}))
        .await;

    assert_problem(empty, StatusCode::UNPROCESSABLE_ENTITY).await;
    let body = assert_problem(null, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["field"], "name");
}

async fn delete_returns_204_then_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app.create_product_id("Doomed", "tools", 1.0).await;
    let path = format!("/products/{id}");

    let first = app.delete(&path).await;
    let second = app.delete(&path).await;

    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    assert_problem(second, StatusCode::NOT_FOUND).await;
    assert_problem(app.get(&path).await, StatusCode::NOT_FOUND).await;
}

async fn every_invalid_field_is_422_naming_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let long_name = "n".repeat(201);
    let long_description = "d".repeat(10_001);
    let long_category = "c".repeat(101);
    let cases: Vec<(&str, Value)> = vec![
        ("name", json!({"name": "   ", "price": 1, "category": "c"})),
        (
            "name",
            json!({"name": long_name, "price": 1, "category": "c"}),
        ),
        ("name", json!({"name": 5, "price": 1, "category": "c"})),
        ("name", json!({"price": 1, "category": "c"})),
        (
            "description",
            json!({"name": "n", "description": long_description, "price": 1, "category": "c"}),
        ),
        (
            "price",
            json!({"name": "n", "price": -0.01, "category": "c"}),
        ),
        (
            "price",
            json!({"name": "n", "price": 1000000000.01, "category": "c"}),
        ),
        (
            // The float right after 1e9: parsed exactly, not rounded to 1e9.
            "price",
            json!({"name": "n", "price": 1_000_000_000.000_000_1, "category": "c"}),
        ),
        (
            "price",
            json!({"name": "n", "price": 19.999, "category": "c"}),
        ),
        (
            "price",
            json!({"name": "n", "price": "19.99", "category": "c"}),
        ),
        ("price", json!({"name": "n", "category": "c"})),
        ("category", json!({"name": "n", "price": 1, "category": ""})),
        (
            "category",
            json!({"name": "n", "price": 1, "category": long_category}),
        ),
        (
            "in_stock",
            json!({"name": "n", "price": 1, "category": "c", "in_stock": "yes"}),
        ),
        (
            "colour",
            json!({"name": "n", "price": 1, "category": "c", "colour": "red"}),
        ),
    ];

    for (field, body) in cases {
        let response = app.create(body.clone()).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["field"], field, "{body}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{problem}"
        );
    }
    let at_limits = app
        .create(
            json!({"name": "n".repeat(200), "description": "d".repeat(10_000),
                       "price": 1000000000, "category": "c".repeat(100)}),
        )
        .await;
    assert_eq!(at_limits.status(), StatusCode::CREATED);
}

async fn a_nul_character_is_422_naming_the_field_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let original = app.create_product("Plain", "tools", 2.5).await;
    let path = format!("/products/{}", original["id"]);
    let with_nul = |field: &str| {
        let mut body = widget();
        body[field] = json!("a\u{0}b");
        body
    };

    for field in ["name", "description", "category"] {
        let writes = [
            app.authed(Method::POST, "/products").json(&with_nul(field)),
            app.authed(Method::PUT, &path).json(&with_nul(field)),
            app.authed(Method::PATCH, &path)
                .json(&json!({ field: "a\u{0}b" })),
        ];
        for write in writes {
            let problem = assert_problem(
                write.send().await.unwrap(),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
            assert_eq!(problem["field"], field, "{problem}");
            assert!(
                problem["detail"].as_str().unwrap().contains("NUL"),
                "{problem}"
            );
        }
    }
    let page = app.get("/products?category=a%00b").await;
    assert_problem(page, StatusCode::BAD_REQUEST).await;

    let now: Value = app.get_json(&path).await;
    assert_eq!(now, original, "nothing was changed");
    let listed: Value = app.get_json("/products").await;
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "nothing was created"
    );
}

async fn malformed_json_is_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    for body in ["{\"name\":", "not json", "", "{} trailing"] {
        let response = app
            .authed(Method::POST, "/products")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
}

async fn a_body_that_is_not_json_is_415(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let wrong_type = app
        .authed(Method::POST, "/products")
        .header("content-type", "text/plain")
        .body(widget().to_string())
        .send()
        .await
        .unwrap();
    let no_type = app
        .authed(Method::POST, "/products")
        .body(widget().to_string())
        .send()
        .await
        .unwrap();

    assert_problem(wrong_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert_problem(no_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

async fn a_body_over_64_kib_is_413(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let huge = json!({"name": "n", "price": 1, "category": "c",
                      "description": "d".repeat(70 * 1024)});

    let response = app.create(huge).await;

    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
}

async fn writes_without_a_valid_token_are_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app.create_product_id("Guarded", "tools", 1.0).await;
    let path = format!("/products/{id}");
    let requests = [
        app.request(Method::POST, "/products").json(&widget()),
        app.request(Method::PUT, &path).json(&widget()),
        app.request(Method::PATCH, &path).json(&json!({"price": 1})),
        app.request(Method::DELETE, &path),
        app.request(Method::DELETE, &path)
            .bearer_auth("wrong-token"),
        app.request(Method::DELETE, &path)
            .header("authorization", "Basic dXNlcjpwYXNz"),
    ];

    for request in requests {
        let response = request.send().await.unwrap();
        assert_eq!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .split(' ')
                .next(),
            Some("Bearer")
        );
        assert_problem(response, StatusCode::UNAUTHORIZED).await;
    }
    let body: Value = app.get_json(&path).await;
    assert_eq!(body["version"], 1, "nothing was changed");
}

async fn batch_get_returns_items_in_order_and_the_missing_ids(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.create_product("A", "tools", 1.0).await;
    let b = app.create_product("B", "tools", 2.0).await;
    let (a_id, b_id) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());

    let body: Value = app
        .get_json(&format!("/products?ids={b_id},999999,{a_id},{b_id}"))
        .await;

    assert_eq!(body["items"], json!([b, a]));
    assert_eq!(body["missing"], json!([999999]));
}

async fn batch_get_rejects_bad_and_too_many_ids(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let too_many = (1..=101)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let hundred = (1..=100)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");

    for query in [
        "ids=", "ids=1,,2", "ids=abc", "ids=0", "ids=-1", "ids=1.5", "ids=1,",
    ] {
        let response = app.get(&format!("/products?{query}")).await;
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
    let response = app.get(&format!("/products?ids={too_many}")).await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;
    let response = app.get("/products?ids=1&category=tools").await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;
    let ok = app.get(&format!("/products?ids={hundred}")).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["missing"].as_array().unwrap().len(), 100);
}

async fn pages_walk_every_product_once_in_id_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut created = Vec::new();
    for i in 0..23 {
        created.push(app.create_product_id(&format!("P{i}"), "tools", 1.0).await);
    }

    let mut seen = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let path = match after {
            Some(after) => format!("/products?limit=5&after={after}"),
            None => "/products?limit=5".to_owned(),
        };
        let page: Value = app.get_json(&path).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 5);
        seen.extend(items.iter().map(|p| p["id"].as_i64().unwrap()));
        match page["next_after"].as_i64() {
            Some(next) => {
                assert_eq!(Some(next), seen.last().copied());
                after = Some(next);
            }
            None => break,
        }
    }

    assert_eq!(seen, created);
    let default_page: Value = app.get_json("/products").await;
    assert_eq!(default_page["items"].as_array().unwrap().len(), 20);
    let exact: Value = app.get_json("/products?limit=23").await;
    assert_eq!(
        exact["next_after"],
        Value::Null,
        "nothing follows the last row"
    );
}

async fn pages_filter_by_category(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tool = app.create_product("Hammer", "tools", 1.0).await;
    app.create_product("Rose", "garden", 1.0).await;
    let tool2 = app.create_product("Saw", "tools", 1.0).await;

    let page: Value = app.get_json("/products?category=tools").await;
    let empty: Value = app.get_json("/products?category=nothing-here").await;

    assert_eq!(page["items"], json!([tool, tool2]));
    assert_eq!(page["next_after"], Value::Null);
    assert_eq!(empty["items"], json!([]));
}

async fn bad_page_parameters_are_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "after=0",
        "after=-5",
        "after=x",
        "category=",
        "unknown=1",
    ] {
        let response = app.get(&format!("/products?{query}")).await;
        let body = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert!(!body["detail"].as_str().unwrap().is_empty(), "{query}");
    }
}

async fn unknown_routes_and_methods_are_problems(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    assert_problem(app.get("/nope").await, StatusCode::NOT_FOUND).await;
    let wrong_method = app.send_json(Method::POST, "/products/1", &widget()).await;
    assert!(wrong_method.headers().contains_key("allow"));
    assert_problem(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await;
}

async fn health_reports_the_store_up(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let response = app.get("/health").await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"status": "ok", "db": "up", "l2": "disabled"}));
    app.stop().await;
}

async fn openapi_document_lists_every_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let doc: Value = app.get_json("/openapi.json").await;
    let docs_page = app.get("/docs/").await;

    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/products", &["get", "post"][..]),
        ("/products/{id}", &["get", "put", "patch", "delete"][..]),
        ("/health", &["get"][..]),
    ] {
        for method in methods {
            assert!(paths[path].get(*method).is_some(), "{method} {path}");
        }
    }
    assert_eq!(docs_page.status(), StatusCode::OK);
    assert!(docs_page.text().await.unwrap().contains("swagger"));
}

/// The inputs the service refuses are outside the schema too (each of
/// these was found by schemathesis, see `.ci/schemathesis.sh`).
async fn openapi_document_describes_what_the_service_accepts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc: Value = app.get_json("/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    let operation = |path: &str, method: &str| doc["paths"][path][method].clone();

    for (path, method) in [
        ("/products/{id}", "get"),
        ("/products/{id}", "delete"),
        ("/cache/products/{id}", "delete"),
    ] {
        let id = &operation(path, method)["parameters"][0];
        assert_eq!(id["schema"]["minimum"], 1, "{method} {path}");
    }
    let patch = &schemas["ProductPatch"];
    assert_eq!(patch["minProperties"], 1, "an empty PATCH is a 422");
    for (field, schema) in patch["properties"].as_object().unwrap() {
        let types = schema["type"].to_string();
        assert!(!types.contains("null"), "PATCH {field}: null is a 422");
    }
    assert_eq!(
        schemas["NewProduct"]["properties"]["price"]["multipleOf"],
        0.01
    );
    assert_eq!(
        schemas["WarmRequest"]["oneOf"].as_array().unwrap().len(),
        3,
        "exactly one of ids, category, all"
    );
    let list = &operation("/products", "get")["parameters"];
    assert_eq!(list.as_array().unwrap().len(), 1, "one query object");
    assert_eq!(
        list[0]["schema"]["oneOf"].as_array().unwrap().len(),
        2,
        "ids or a page, never both"
    );
    for (path, method, status) in [
        ("/products/{id}", "put", "415"),
        ("/products/{id}", "patch", "413"),
        ("/cache/warm", "post", "415"),
        ("/cache/warm", "post", "400"),
        ("/products/{id}", "get", "503"),
    ] {
        assert!(
            operation(path, method)["responses"].get(status).is_some(),
            "{method} {path} documents {status}"
        );
    }
    // What the schema calls an integer, the service takes as one.
    let warm = app
        .send_json(Method::POST, "/cache/warm", &json!({"ids": [1.0]}))
        .await;
    assert_eq!(warm.status(), StatusCode::OK);
}

async fn prices_round_trip_exactly(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    for price in [
        "19.99",
        "0.01",
        "0",
        "999999999.99",
        "1000000000",
        "0.1",
        "12.5",
    ] {
        let body = format!(r#"{{"name":"p","price":{price},"category":"c"}}"#);
        let created: Value = app
            .authed(Method::POST, "/products")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["id"].as_i64().unwrap();
        let text = app
            .get(&format!("/products/{id}"))
            .await
            .text()
            .await
            .unwrap();
        let fetched: Value = serde_json::from_str(&text).unwrap();
        let expected: f64 = price.parse().unwrap();
        assert_eq!(fetched["price"].as_f64().unwrap(), expected, "{text}");
    }
}

async fn store_gone_is_503_without_internals(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app.create_product_id("Before", "tools", 1.0).await;
    if backend == Backend::Sqlite {
        // A deleted SQLite file stays readable through open handles; break
        // the table instead, the way a bad migration would.
        sqlx_sqlite_drop_table(&app).await;
    } else {
        app.db.destroy().await;
    }

    let response = app.get(&format!("/products/{id}")).await;

    let status = response.status();
    assert!(
        status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::INTERNAL_SERVER_ERROR,
        "{status}"
    );
    let body = assert_problem(response, status).await;
    let detail = body["detail"].as_str().unwrap().to_lowercase();
    for leak in [
        "select",
        "sql",
        "products",
        "database",
        "pool",
        "error returned",
    ] {
        assert!(!detail.contains(leak), "{detail}");
    }
    if backend == Backend::Postgres {
        let health = app.get("/health").await;
        assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
        let health: Value = health.json().await.unwrap();
        assert_eq!(health["db"], "down");
    }
}

async fn sqlx_sqlite_drop_table(app: &TestApp) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&app.db.url())
        .await
        .unwrap();
    sqlx::query("DROP TABLE products")
        .execute(&mut conn)
        .await
        .unwrap();
}
