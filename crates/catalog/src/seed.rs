//! Generated sample data: plausible products across twenty categories,
//! inserted in batches (one statement or transaction per batch).

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use rand::seq::IndexedRandom;

use crate::domain::{Category, Description, NewProduct, Price, ProductName};
use crate::store::{Store, StoreError};

/// Rows per insert batch: large enough to amortise round trips, small enough
/// to keep one PostgreSQL statement's parameters and a SQLite transaction short.
const BATCH: usize = 1_000;

/// Categories with nouns that fit them; prices are drawn from each range (cents).
const CATEGORIES: &[(&str, &[&str], (i64, i64))] = &[
    (
        "tools",
        &["Hammer", "Wrench", "Screwdriver Set", "Drill", "Pliers"],
        (499, 24_999),
    ),
    (
        "kitchen",
        &[
            "Chef's Knife",
            "Skillet",
            "Cutting Board",
            "Kettle",
            "Blender",
        ],
        (899, 19_999),
    ),
    (
        "garden",
        &["Hose", "Pruning Shears", "Planter", "Rake", "Watering Can"],
        (599, 12_999),
    ),
    (
        "electronics",
        &[
            "Headphones",
            "USB-C Charger",
            "Bluetooth Speaker",
            "Webcam",
            "Power Bank",
        ],
        (1_499, 49_999),
    ),
    (
        "books",
        &[
            "Cookbook",
            "Field Guide",
            "Novel",
            "Atlas",
            "Poetry Collection",
        ],
        (799, 5_999),
    ),
    (
        "toys",
        &[
            "Puzzle",
            "Building Blocks",
            "Kite",
            "Board Game",
            "Plush Bear",
        ],
        (599, 8_999),
    ),
    (
        "sports",
        &[
            "Yoga Mat",
            "Football",
            "Tennis Racket",
            "Jump Rope",
            "Water Bottle",
        ],
        (699, 29_999),
    ),
    (
        "outdoors",
        &[
            "Tent",
            "Sleeping Bag",
            "Headlamp",
            "Camping Stove",
            "Backpack",
        ],
        (1_999, 59_999),
    ),
    (
        "office",
        &[
            "Notebook",
            "Desk Lamp",
            "Stapler",
            "Monitor Stand",
            "Fountain Pen",
        ],
        (299, 14_999),
    ),
    (
        "clothing",
        &["T-Shirt", "Rain Jacket", "Wool Socks", "Hoodie", "Scarf"],
        (999, 24_999),
    ),
    (
        "shoes",
        &[
            "Running Shoes",
            "Hiking Boots",
            "Sandals",
            "Sneakers",
            "Slippers",
        ],
        (2_999, 19_999),
    ),
    (
        "beauty",
        &[
            "Face Cream",
            "Shampoo",
            "Lip Balm",
            "Sunscreen",
            "Hand Soap",
        ],
        (299, 4_999),
    ),
    (
        "grocery",
        &[
            "Coffee Beans",
            "Olive Oil",
            "Green Tea",
            "Dark Chocolate",
            "Honey",
        ],
        (199, 2_999),
    ),
    (
        "pets",
        &["Dog Leash", "Cat Tree", "Pet Bed", "Chew Toy", "Food Bowl"],
        (399, 15_999),
    ),
    (
        "automotive",
        &[
            "Car Wax",
            "Jump Starter",
            "Tire Gauge",
            "Floor Mats",
            "Phone Mount",
        ],
        (599, 17_999),
    ),
    (
        "music",
        &[
            "Guitar Strings",
            "Ukulele",
            "Metronome",
            "Microphone",
            "Drum Sticks",
        ],
        (499, 39_999),
    ),
    (
        "health",
        &[
            "Thermometer",
            "First Aid Kit",
            "Vitamin D",
            "Heating Pad",
            "Pill Organizer",
        ],
        (299, 7_999),
    ),
    (
        "home",
        &[
            "Throw Blanket",
            "Candle",
            "Picture Frame",
            "Wall Clock",
            "Vase",
        ],
        (699, 11_999),
    ),
    (
        "baby",
        &[
            "Baby Monitor",
            "Bib Set",
            "Stroller Fan",
            "Teether",
            "Swaddle",
        ],
        (499, 19_999),
    ),
    (
        "crafts",
        &[
            "Watercolor Set",
            "Knitting Needles",
            "Glue Gun",
            "Sketchbook",
            "Clay Kit",
        ],
        (399, 6_999),
    ),
];

const ADJECTIVES: &[&str] = &[
    "Classic",
    "Compact",
    "Deluxe",
    "Eco",
    "Essential",
    "Heavy-Duty",
    "Lightweight",
    "Modern",
    "Premium",
    "Pro",
    "Rustic",
    "Smart",
    "Sturdy",
    "Travel",
    "Vintage",
];

const MATERIALS: &[&str] = &[
    "bamboo",
    "stainless steel",
    "recycled plastic",
    "oak",
    "cotton",
    "aluminium",
    "ceramic",
    "silicone",
    "leather",
    "glass",
];

/// One generated product.
pub fn product(rng: &mut impl Rng) -> NewProduct {
    let (category, nouns, (low, high)) = *CATEGORIES.choose(rng).expect("CATEGORIES is not empty");
    let noun = nouns.choose(rng).expect("every category has nouns");
    let adjective = ADJECTIVES.choose(rng).expect("ADJECTIVES is not empty");
    let material = MATERIALS.choose(rng).expect("MATERIALS is not empty");
    let model = rng.random_range(100..1000);
    let name = format!("{adjective} {noun} {model}");
    let description = format!(
        "{adjective} {} made of {material}. Model {model}, part of our {category} range.",
        noun.to_lowercase()
    );
    NewProduct {
        name: ProductName::parse(&name).expect("generated names are short and non-empty"),
        description: Description::parse(&description).expect("generated descriptions are short"),
        price: Price::from_cents(rng.random_range(low..=high)).expect("seed prices are in range"),
        category: Category::parse(category).expect("seed categories are valid"),
        in_stock: rng.random_bool(0.85),
    }
}

/// Inserts `count` generated products in batches, with a progress bar when
/// stderr is a terminal (indicatif draws nothing otherwise).
///
/// # Errors
/// The first store error; batches before it stay inserted.
pub async fn seed(store: &dyn Store, count: u64) -> Result<u64, StoreError> {
    let progress = ProgressBar::new(count).with_style(
        ProgressStyle::with_template(
            "seeding {bar:40} {pos}/{len} products ({per_sec}, eta {eta})",
        )
        .expect("the progress template is valid"),
    );
    let mut rng = rand::rng();
    let mut inserted = 0;
    while inserted < count {
        let size = (count - inserted).min(BATCH as u64) as usize;
        let batch: Vec<NewProduct> = (0..size).map(|_| product(&mut rng)).collect();
        inserted += store.create_many(&batch).await?;
        progress.set_position(inserted);
    }
    progress.finish_and_clear();
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_products_span_many_categories_and_are_valid() {
        let mut rng = rand::rng();
        let products: Vec<NewProduct> = (0..2_000).map(|_| product(&mut rng)).collect();
        let categories: std::collections::HashSet<&str> =
            products.iter().map(|p| p.category.as_str()).collect();
        assert_eq!(CATEGORIES.len(), 20);
        assert!(categories.len() >= 18, "{categories:?}");
        assert!(products.iter().any(|p| p.in_stock));
        assert!(products.iter().any(|p| !p.in_stock));
    }
}
