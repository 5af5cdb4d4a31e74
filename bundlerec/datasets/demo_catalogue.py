"""The demo shop's assortment: departments, their categories, brands, words for titles, price ranges.

Kept apart from the generator (demo.py) because it is data, not logic: one department is an anchor
category people come for (phones, cameras, hiking boots) plus the complementary categories that sell
with it (cases, lenses, rain jackets). That structure is what bundle and next-item models should
discover, so it is written out by hand rather than drawn at random.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CategorySpec:
    """One leaf category. `variants` are title suffix templates filled from VARIANT_VALUES."""

    path: str
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    variants: tuple[str, ...]
    price: tuple[float, float]  # typical low and high price
    share: float = 1.0  # relative number of items


@dataclass(frozen=True, slots=True)
class Department:
    """An anchor category, the categories bought with it, brands (budget to premium) and bundle intents.

    Intents are bundle title templates: {anchor} is the anchor item's short name, {with} the list of
    what comes with it."""

    name: str
    anchor: CategorySpec
    complements: tuple[CategorySpec, ...]
    brands: tuple[str, ...]
    intents: tuple[str, ...]


VARIANT_VALUES: dict[str, tuple[str, ...]] = {
    "colour": ("Black", "White", "Navy", "Graphite", "Olive", "Sand", "Burgundy", "Sky Blue", "Silver", "Forest Green"),
    "size": ("XS", "S", "M", "L", "XL", "XXL"),
    "shoe": ("36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46"),
    "gender": ("Men's", "Women's", "Unisex"),
    "waist": ("W30 L32", "W32 L32", "W32 L34", "W34 L32", "W34 L34", "W36 L34"),
    "storage": ("64 GB", "128 GB", "256 GB", "512 GB"),
    "card": ("32 GB", "64 GB", "128 GB", "256 GB"),
    "pack": ("Pack of 2", "Pack of 3", "Pack of 5", "Pack of 10"),
    "weight": ("250 g", "500 g", "1 kg"),
    "volume": ("30 ml", "50 ml", "100 ml", "200 ml"),
    "litres": ("0.8 L", "1 L", "1.2 L", "1.7 L"),
    "pack_l": ("18 L", "24 L", "30 L", "38 L", "45 L"),
    "length": ("1 m", "2 m", "3 m"),
    "watts": ("20 W", "30 W", "45 W", "65 W"),
    "focal": ("24mm f/1.8", "35mm f/1.4", "50mm f/1.8", "85mm f/1.8", "24-70mm f/2.8", "70-200mm f/4"),
    "screen": ('24"', '27"', '32"', '34" Ultrawide'),
    "bed": ("Single", "Double", "King", "Super King"),
    "frame": ("S", "M", "L", "XL"),
    "dog": ("Small", "Medium", "Large"),
    "lumens": ("200 lm", "400 lm", "800 lm"),
}


def _cat(
    path: str, nouns: str, adjectives: str, variants: str, low: float, high: float, share: float = 1.0
) -> CategorySpec:
    """Compact table rows: comma-separated words, semicolon-separated variant templates."""
    return CategorySpec(
        path,
        tuple(n.strip() for n in nouns.split(",")),
        tuple(a.strip() for a in adjectives.split(",")),
        tuple(v.strip() for v in variants.split(";")),
        (low, high),
        share,
    )


# The table is laid out by hand, one category per two lines; the formatter would spread it over 600.
# fmt: off
DEPARTMENTS: tuple[Department, ...] = (
    Department(
        "Phones",
        _cat("Electronics > Phones > Smartphones", "Smartphone", "5G, Compact, Pro, Ultra, Lite, Dual-SIM",
             "{storage}, {colour}", 180, 1200, 0.7),
        (
            _cat("Electronics > Phones > Cases", "Phone Case, Folio Case, Bumper Case",
                 "Slim, Rugged, Clear, Leather, Shockproof, MagSafe", "{colour}", 8, 60, 1.4),
            _cat("Electronics > Phones > Chargers", "Fast Charger, Wireless Charging Pad, Car Charger, USB-C Cable",
                 "Compact, Braided, Dual-Port, GaN", "{watts}; {length}", 9, 70, 1.2),
            _cat("Electronics > Phones > Screen Protectors", "Screen Protector, Privacy Screen Protector",
                 "Tempered Glass, Anti-Glare, Edge-to-Edge", "{pack}", 6, 30),
            _cat("Electronics > Audio > Earbuds", "Wireless Earbuds, Earbuds", "Noise-Cancelling, Sport, Compact",
                 "{colour}", 25, 280, 0.9),
        ),
        ("Voltra", "Nexon", "Kairo", "Lumina", "Aster"),
        ("Protect your new {anchor}: {with}", "Phone starter kit: {anchor} with {with}",
         "Everything for your {anchor}"),
    ),
    Department(
        "Menswear",
        _cat("Clothing > Men > Shirts", "Oxford Shirt, Linen Shirt, Poplin Shirt, Flannel Shirt",
             "Slim-Fit, Regular-Fit, Non-Iron, Button-Down, Organic Cotton", "{colour}, Size {size}",
             25, 120, 1.2),
        (
            _cat("Clothing > Men > Trousers", "Chinos, Wool Trousers, Cargo Trousers",
                 "Slim-Fit, Stretch, Tailored, Relaxed", "{colour}, {waist}", 35, 150),
            _cat("Clothing > Shoes > Men's Shoes", "Derby Shoes, Loafers, Chelsea Boots, Leather Sneakers",
                 "Leather, Suede, Classic, Lightweight", "{colour}, Size {shoe}", 50, 260),
            _cat("Clothing > Accessories > Belts", "Leather Belt, Braided Belt, Reversible Belt",
                 "Classic, Slim, Full-Grain", "{colour}, Size {size}", 15, 80, 0.6),
            _cat("Clothing > Accessories > Ties", "Silk Tie, Knitted Tie", "Slim, Patterned, Plain",
                 "{colour}", 15, 70, 0.5),
        ),
        ("Harwick", "Bellmont", "Oak & Ash", "Fenwick", "Marlowe"),
        ("Complete the look: {anchor} with {with}", "Office ready: {anchor} with {with}",
         "Smart-casual outfit: {anchor} with {with}"),
    ),
    Department(
        "Cameras",
        _cat("Electronics > Cameras > Mirrorless Cameras", "Mirrorless Camera, Camera Body",
             "Full-Frame, APS-C, Compact, Weather-Sealed, 4K", "{colour}", 450, 2800, 0.6),
        (
            _cat("Electronics > Cameras > Lenses", "Prime Lens, Zoom Lens, Portrait Lens",
                 "Fast, Compact, Weather-Sealed, Stabilised", "{focal}", 150, 1600),
            _cat("Electronics > Cameras > Tripods", "Travel Tripod, Carbon Tripod, Tabletop Tripod",
                 "Lightweight, Compact, Heavy-Duty", "{colour}", 25, 320, 0.8),
            _cat("Electronics > Cameras > Memory Cards", "SD Card, microSD Card, CFexpress Card",
                 "UHS-II, High-Speed, Pro, V60", "{card}", 10, 180, 1.0),
            _cat("Electronics > Cameras > Camera Bags", "Camera Backpack, Sling Bag, Camera Insert",
                 "Weatherproof, Compact, Urban", "{colour}", 30, 220, 0.8),
        ),
        ("Optika", "Lenscraft", "Halden", "Corvid", "Sunao"),
        ("Camera starter kit: {anchor} with {with}", "Shoot on day one: {anchor} with {with}",
         "Travel photography set: {anchor} with {with}"),
    ),
    Department(
        "Coffee",
        _cat("Kitchen > Coffee > Coffee Machines", "Espresso Machine, Filter Coffee Maker, Bean-to-Cup Machine",
             "Compact, Dual-Boiler, Programmable, Stainless", "{colour}", 70, 900, 0.7),
        (
            _cat("Kitchen > Coffee > Grinders", "Burr Grinder, Hand Grinder", "Conical, Flat, Stepless, Quiet",
                 "{colour}", 25, 350, 0.8),
            _cat("Kitchen > Coffee > Kettles", "Pour-Over Kettle, Electric Kettle", "Gooseneck, Temperature-Control",
                 "{litres}, {colour}", 25, 160, 0.8),
            _cat("Kitchen > Coffee > Coffee Beans", "Espresso Beans, Filter Roast, Single-Origin Beans",
                 "Dark Roast, Medium Roast, Light Roast, Decaf, Organic", "{weight}", 6, 40, 1.5),
            _cat("Kitchen > Coffee > Mugs & Cups", "Mug, Travel Mug, Espresso Cups", "Ceramic, Insulated, Glass",
                 "{colour}; {pack}", 8, 45),
        ),
        ("Roastery", "Brewhaus", "Crema", "Mokka & Co", "Kaldi"),
        ("Morning brew set: {anchor} with {with}", "Barista at home: {anchor} with {with}",
         "Coffee corner: {anchor} with {with}"),
    ),
    Department(
        "Hiking",
        _cat("Outdoor > Hiking > Boots", "Trail Boots, Hiking Boots, Approach Shoes",
             "Waterproof, Lightweight, Mid-Cut, Gore-Tex", "{gender}, Size {shoe}", 70, 280, 1.0),
        (
            _cat("Outdoor > Hiking > Backpacks", "Daypack, Trekking Backpack",
                 "Ventilated, Ultralight, Hydration-Ready", "{pack_l}, {colour}", 35, 260),
            _cat("Outdoor > Hiking > Rain Jackets", "Rain Jacket, Hardshell Jacket", "Waterproof, Packable, 3-Layer",
                 "{gender}, Size {size}", 60, 380),
            _cat("Outdoor > Hiking > Trekking Poles", "Trekking Poles", "Carbon, Aluminium, Folding",
                 "{colour}", 25, 150, 0.6),
            _cat("Outdoor > Hiking > Headlamps", "Headlamp", "Rechargeable, Waterproof, Lightweight",
                 "{lumens}", 15, 90, 0.6),
        ),
        ("Northpeak", "Trailform", "Alpenwerk", "Summitry", "Fjellstad"),
        ("Ready for the trail: {anchor} with {with}", "Weekend hike kit: {anchor} with {with}",
         "Stay dry out there: {anchor} with {with}"),
    ),
    Department(
        "Cycling",
        _cat("Sports > Cycling > Bikes", "Road Bike, Gravel Bike, City Bike, Hybrid Bike",
             "Aluminium, Carbon, Lightweight, 1x12", "Frame {frame}, {colour}", 350, 3200, 0.6),
        (
            _cat("Sports > Cycling > Helmets", "Cycling Helmet, Commuter Helmet", "Ventilated, MIPS, Aero",
                 "Size {frame}, {colour}", 35, 220),
            _cat("Sports > Cycling > Bike Lights", "Bike Light Set, Rear Light", "Rechargeable, USB-C, Daytime",
                 "{lumens}", 15, 120),
            _cat("Sports > Cycling > Locks", "D-Lock, Folding Lock, Chain Lock", "Hardened, Sold Secure Gold",
                 "{colour}", 25, 130, 0.7),
            _cat("Sports > Cycling > Bottles & Cages", "Water Bottle, Bottle Cage", "Insulated, Lightweight",
                 "{colour}", 6, 35, 0.8),
        ),
        ("Velotra", "Spokewise", "Cadenza", "Rideform", "Brisk"),
        ("Ride-ready bundle: {anchor} with {with}", "Commuter kit: {anchor} with {with}",
         "Safe from day one: {anchor} with {with}"),
    ),
    Department(
        "Home office",
        _cat("Office > Desk Setup > Monitors", "Monitor, 4K Monitor, Curved Monitor", "IPS, USB-C, Height-Adjustable",
             "{screen}", 120, 900, 0.8),
        (
            _cat("Office > Desk Setup > Keyboards", "Mechanical Keyboard, Wireless Keyboard",
                 "Low-Profile, Quiet, Compact", "{colour}", 25, 200),
            _cat("Office > Desk Setup > Mice", "Wireless Mouse, Ergonomic Mouse, Vertical Mouse",
                 "Silent, Rechargeable", "{colour}", 15, 120),
            _cat("Office > Desk Setup > Desk Lamps", "LED Desk Lamp, Monitor Light Bar", "Dimmable, Clamp-On",
                 "{colour}", 20, 140, 0.7),
            _cat("Office > Desk Setup > Monitor Arms", "Monitor Arm, Dual Monitor Arm", "Gas-Spring, Heavy-Duty",
                 "{colour}", 30, 220, 0.6),
        ),
        ("Deskwise", "Pixeline", "Ergon", "Workly", "Clarion"),
        ("Home office setup: {anchor} with {with}", "Desk upgrade: {anchor} with {with}",
         "Work from home kit: {anchor} with {with}"),
    ),
    Department(
        "Skincare",
        _cat("Beauty > Skincare > Moisturisers", "Day Cream, Night Cream, Moisturiser",
             "Hydrating, Fragrance-Free, Rich", "{volume}", 8, 90, 1.0),
        (
            _cat("Beauty > Skincare > Cleansers", "Gel Cleanser, Cleansing Balm, Micellar Water", "Gentle, Foaming",
                 "{volume}", 6, 40),
            _cat("Beauty > Skincare > Serums", "Vitamin C Serum, Hyaluronic Serum, Retinol Serum",
                 "Brightening, Firming", "{volume}", 10, 110),
            _cat("Beauty > Skincare > Sunscreen", "Sunscreen SPF 50, Daily SPF 30", "Invisible, Mineral, Sport",
                 "{volume}", 8, 45),
            _cat("Beauty > Skincare > Face Masks", "Sheet Mask, Clay Mask, Overnight Mask", "Soothing, Purifying",
                 "{pack}", 5, 40, 0.7),
        ),
        ("Lumeé", "Dermalab", "Verdant", "Aurelle", "Skinsmith"),
        ("Daily routine: {anchor} with {with}", "Glow kit: {anchor} with {with}",
         "Skincare starter: {anchor} with {with}"),
    ),
    Department(
        "Dogs",
        _cat("Pets > Dogs > Dog Food", "Dry Dog Food, Grain-Free Dog Food, Puppy Food", "Chicken, Salmon, Lamb, Senior",
             "{weight}", 8, 70, 1.0),
        (
            _cat("Pets > Dogs > Leashes & Collars", "Leash, Collar, Harness", "Reflective, Padded, No-Pull",
                 "Size {dog}, {colour}", 10, 60),
            _cat("Pets > Dogs > Dog Beds", "Dog Bed, Orthopaedic Dog Bed", "Washable, Memory-Foam, Calming",
                 "Size {dog}", 25, 180, 0.7),
            _cat("Pets > Dogs > Toys", "Chew Toy, Rope Toy, Ball Launcher", "Durable, Squeaky, Floating",
                 "Size {dog}", 5, 40),
            _cat("Pets > Dogs > Bowls", "Food Bowl, Slow Feeder, Travel Bowl", "Stainless, Non-Slip, Collapsible",
                 "Size {dog}", 6, 35, 0.6),
        ),
        ("Pawly", "Barkside", "Houndly", "Furbest", "Wagtail"),
        ("New puppy kit: {anchor} with {with}", "Happy dog bundle: {anchor} with {with}",
         "Walkies set: {anchor} with {with}"),
    ),
    Department(
        "Bedroom",
        _cat("Home > Bedroom > Mattresses", "Mattress, Hybrid Mattress, Memory Foam Mattress",
             "Medium-Firm, Pocket-Sprung, Cooling", "{bed}", 180, 1400, 0.6),
        (
            _cat("Home > Bedroom > Pillows", "Pillow, Memory Foam Pillow", "Hypoallergenic, Side-Sleeper, Cooling",
                 "{pack}", 15, 120),
            _cat("Home > Bedroom > Duvets", "Duvet, All-Season Duvet", "Down, Hypoallergenic, Lightweight",
                 "{bed}", 40, 320),
            _cat("Home > Bedroom > Bed Sheets", "Fitted Sheet, Bed Linen Set", "Egyptian Cotton, Linen, Percale",
                 "{bed}, {colour}", 25, 180, 1.2),
            _cat("Home > Bedroom > Mattress Protectors", "Mattress Protector, Mattress Topper", "Waterproof, Quilted",
                 "{bed}", 20, 160, 0.7),
        ),
        ("Dreamwell", "Restora", "Linnea", "Slumberly", "Hygge Home"),
        ("Complete bed: {anchor} with {with}", "Sleep better: {anchor} with {with}",
         "New home bedroom set: {anchor} with {with}"),
    ),
)
# fmt: on

# Bundles of one category only ("value packs") get this intent.
MULTIPACK_INTENT = "Value pack: {count} × {noun}"
