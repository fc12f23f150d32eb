"""Synthetic names: built-in lists of forenames and surnames common among people in England born
1925-1970, a nickname map, and vectorised drawing.

Names are drawn within a naming tradition (British and Irish, South Asian Muslim, Sikh and Hindu,
Caribbean and African, European, East Asian) so forename and surname go together plausibly, with
Zipf-like weights within each list (the first names of a list are the most common). That gives the
skewed frequencies that term-frequency adjustment in probabilistic linkage is meant to handle, while
leaving enough variety that name plus date of birth rarely identifies two people.

The lists deliberately include the awkward cases a linkage pipeline must canonicalise: apostrophes
(O'Brien, D'Souza), accents (Zoë, Siân, Núñez, Wójcik) and double-barrelled surnames (built from
two surnames with a hyphen for a few people).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

# (tradition, share of people, female forenames, male forenames, surnames), each list most common first.
_TRADITIONS: tuple[tuple[str, float, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "british_irish",
        0.86,
        (
            "Margaret", "Patricia", "Susan", "Elizabeth", "Mary", "Linda", "Christine", "Jean", "Janet", "Barbara",
            "Carol", "Sandra", "Pauline", "Brenda", "Ann", "Anne", "Joan", "Valerie", "Sheila", "Kathleen",
            "Maureen", "Jennifer", "Julie", "Karen", "Deborah", "Gillian", "Elaine", "Irene", "Doreen", "Dorothy",
            "Eileen", "Joyce", "Shirley", "Beryl", "Sylvia", "Marjorie", "Betty", "Edna", "Iris", "Rita",
            "Veronica", "Catherine", "Helen", "Alison", "Diane", "Lesley", "Jacqueline", "Wendy", "Angela", "Frances",
            "Judith", "Rosemary", "Hazel", "Marion", "Marilyn", "Yvonne", "Lorraine", "Denise", "Carole", "Lynn",
            "Gail", "Heather", "Jane", "Sarah", "Ruth", "Teresa", "Josephine", "Hilda", "Gladys", "Ivy",
            "Vera", "Audrey", "Mavis", "Rose", "Ellen", "Florence", "Winifred", "Evelyn", "Norma", "June",
            "Sally", "Elsie", "Lilian", "Olive", "Pamela", "Alice", "Victoria", "Deirdre", "Bridget", "Siobhan",
            "Siân", "Bronwen", "Gwen", "Rhiannon", "Morag", "Fiona", "Isobel", "Agnes", "Amanda", "Tracey",
            "Sharon", "Joanne", "Dawn", "Jill", "Nicola", "Caroline", "Louise", "Claire", "Rachel", "Kathryn",
            "Rebecca", "Abigail", "Zoë", "Renée", "Chloë", "Philippa", "Geraldine", "Bernadette", "Annette", "Marian",
        ),
        (
            "John", "David", "Michael", "Peter", "Robert", "William", "James", "Richard", "Brian", "Anthony",
            "Kenneth", "Alan", "Christopher", "Stephen", "Paul", "Thomas", "George", "Keith", "Graham", "Colin",
            "Ronald", "Derek", "Raymond", "Roger", "Geoffrey", "Dennis", "Terence", "Barry", "Malcolm", "Trevor",
            "Leslie", "Norman", "Frank", "Harold", "Arthur", "Albert", "Frederick", "Ernest", "Stanley", "Edward",
            "Charles", "Joseph", "Patrick", "Francis", "Gerald", "Douglas", "Gordon", "Ian", "Andrew", "Martin",
            "Philip", "Nigel", "Neil", "Gary", "Mark", "Kevin", "Steven", "Timothy", "Jonathan", "Nicholas",
            "Simon", "Adrian", "Clive", "Howard", "Leonard", "Walter", "Sidney", "Harry", "Henry", "Jack",
            "Ralph", "Victor", "Vincent", "Bernard", "Donald", "Eric", "Gareth", "Rhys", "Dafydd", "Huw",
            "Hamish", "Angus", "Alistair", "Duncan", "Fergus", "Seán", "Declan", "Liam", "Kieran", "Dermot",
            "Brendan", "Desmond", "Reginald", "Cyril", "Clifford", "Herbert", "Wilfred", "Maurice", "Lawrence", "Russell",
            "Roy", "Ivor", "Glyn", "Alexander", "Samuel", "Matthew", "Daniel", "Benjamin", "Lionel", "Barrie",
        ),
        (
            "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas", "Johnson",
            "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes", "Green", "Hall",
            "Lewis", "Harris", "Clarke", "Patel", "Jackson", "Wood", "Turner", "Martin", "Cooper", "Hill",
            "Ward", "Morris", "Moore", "Clark", "Lee", "King", "Baker", "Harrison", "Morgan", "Allen",
            "James", "Scott", "Phillips", "Watson", "Davis", "Parker", "Price", "Bennett", "Young", "Griffiths",
            "Mitchell", "Kelly", "Cook", "Carter", "Richardson", "Bailey", "Collins", "Bell", "Shaw", "Murphy",
            "Miller", "Cox", "Richards", "Khan", "Marshall", "Anderson", "Simpson", "Ellis", "Adams", "Singh",
            "Begum", "Wilkinson", "Foster", "Chapman", "Powell", "Webb", "Rogers", "Gray", "Mason", "Ali",
            "Hunt", "Hussain", "Campbell", "Matthews", "Owen", "Palmer", "Holmes", "Mills", "Barnes", "Knight",
            "Lloyd", "Butler", "Russell", "Barker", "Fisher", "Stevens", "Jenkins", "Murray", "Dixon", "Harvey",
            "Graham", "Pearson", "Ahmed", "Fletcher", "Walsh", "Kaur", "Gibson", "Howard", "Andrews", "Stewart",
            "Elliott", "Reynolds", "Saunders", "Payne", "Fox", "Ford", "Pearce", "Day", "Brooks", "West",
            "Lawrence", "Cole", "Atkinson", "Bradley", "Spencer", "Gill", "Dawson", "Ball", "Burton", "O'Brien",
            "Watts", "Rose", "Booth", "Perry", "Ryan", "Grant", "Wells", "Armstrong", "Francis", "Rees",
            "Hayes", "Hart", "Hudson", "Newman", "Barrett", "Webster", "Hunter", "Gregory", "Carr", "Lowe",
            "Page", "Marsh", "Riley", "Dunn", "Woods", "Parsons", "Berry", "Stone", "Reid", "Holland",
            "Hawkins", "Harding", "Porter", "Robertson", "Newton", "Oliver", "Reed", "Kennedy", "Williamson", "Bird",
            "Gardner", "Shah", "Dean", "Lane", "Cooke", "Bates", "Henderson", "Parry", "Burgess", "Bishop",
            "Walton", "Burns", "Nicholson", "Shepherd", "Ross", "Cross", "Long", "Freeman", "Warren", "Nicholls",
            "Hamilton", "Byrne", "Sutton", "McDonald", "Yates", "Hodgson", "Robson", "Curtis", "Hopkins", "O'Connor",
            "Harper", "Coleman", "Watkins", "Moss", "McCarthy", "Chambers", "O'Neill", "Griffin", "Sharp", "Hardy",
            "Wheeler", "Potter", "Osborne", "Johnston", "Gordon", "Doyle", "Wallace", "George", "Jordan", "Hutchinson",
            "Rowe", "Burke", "May", "Pritchard", "Gilbert", "Willis", "Higgins", "Read", "Miles", "Stevenson",
            "Stephenson", "Hammond", "Arnold", "Buckley", "Walters", "Hewitt", "Barber", "Nelson", "Slater", "Austin",
            "Sullivan", "Whitehead", "Mann", "Frost", "Lambert", "Stephens", "Blake", "Akhtar", "Lynch", "Goodwin",
            "Barton", "Woodward", "Thomson", "Cunningham", "Quinn", "Barnett", "Baxter", "Bibi", "Clayton", "Nash",
            "Greenwood", "Jennings", "Holt", "Kemp", "Poole", "Gallagher", "Bond", "Stokes", "Tucker", "Davidson",
            "Fowler", "Heath", "Norman", "Middleton", "Lawson", "Banks", "French", "Stanley", "Jarvis", "Gibbs",
            "Ferguson", "Hayward", "Carroll", "Douglas", "Dickinson", "Todd", "Barlow", "Peters", "Lucas", "Knowles",
            "Hartley", "Miah", "Simmons", "Morton", "Alexander", "Field", "Morrison", "Norris", "Townsend", "Preston",
            "O'Sullivan", "O'Reilly", "O'Donnell", "O'Hara", "O'Leary", "O'Callaghan", "O'Malley", "McLaughlin",
            "MacDonald", "MacKenzie", "Fitzgerald", "Llewellyn", "ap Rhys", "Ní Bhriain",
        ),
    ),
    (
        "south_asian_muslim",
        0.04,
        (
            "Shabana", "Nasreen", "Parveen", "Shamim", "Rukhsana", "Fatima", "Razia", "Zubeda", "Nusrat", "Yasmin",
            "Farzana", "Shaheen", "Tahira", "Khalida", "Sajida", "Naseem", "Rashida", "Salma", "Amina", "Zainab",
        ),
        (
            "Mohammed", "Muhammad", "Mohammad", "Abdul", "Ali", "Ahmed", "Tariq", "Imran", "Shahid", "Zafar",
            "Iqbal", "Rashid", "Khalid", "Javed", "Nadeem", "Arshad", "Aslam", "Bashir", "Ghulam", "Yusuf",
        ),
        (
            "Khan", "Hussain", "Ahmed", "Ali", "Shah", "Akhtar", "Iqbal", "Malik", "Mahmood", "Rashid",
            "Begum", "Bibi", "Butt", "Chaudhry", "Qureshi", "Sheikh", "Mirza", "Aslam", "Anwar", "Javed",
            "Latif", "Raja", "Siddiqui", "Hanif", "Yousaf", "Karim", "Nawaz", "Sadiq", "Rehman", "Zaman",
            "Miah", "Uddin", "Islam", "Rahman", "Choudhury",
        ),
    ),
    (
        "sikh_hindu",
        0.03,
        (
            "Kulwant", "Surinder", "Harjit", "Manjit", "Gurmeet", "Jaswinder", "Pushpa", "Kamala", "Savita", "Hansa",
            "Bharati", "Usha", "Meena", "Sunita", "Anita", "Nirmala", "Shanti", "Lakshmi", "Rajinder", "Balbir",
        ),
        (
            "Gurdeep", "Harjinder", "Sukhdev", "Jagdish", "Balwinder", "Amarjit", "Rajesh", "Ramesh", "Suresh", "Dinesh",
            "Mahesh", "Vijay", "Pradeep", "Krishna", "Mohan", "Ashok", "Anil", "Sunil", "Kuldip", "Davinder",
        ),
        (
            "Singh", "Kaur", "Patel", "Sharma", "Gill", "Sandhu", "Dhillon", "Sidhu", "Bains", "Mistry",
            "Shah", "Parmar", "Chauhan", "Kumar", "Joshi", "Mehta", "Desai", "Thakkar", "Lal", "Virdi",
            "Johal", "Grewal", "Bhatti", "Rai", "Kang", "Sohal", "Dhaliwal", "Gupta", "Chopra", "Solanki",
        ),
    ),
    (
        "caribbean_african",
        0.03,
        (
            "Hyacinth", "Beverley", "Marcia", "Precious", "Gloria", "Blessing", "Joyce", "Grace", "Comfort", "Patience",
            "Veronica", "Merlene", "Claudette", "Pearline", "Esme", "Ama", "Abena", "Ngozi", "Funmilayo", "Adaeze",
        ),
        (
            "Winston", "Delroy", "Errol", "Clifton", "Lloyd", "Leroy", "Everton", "Kwame", "Kofi", "Chukwuemeka",
            "Oluwaseun", "Adebayo", "Emmanuel", "Samuel", "Joseph", "Neville", "Carlton", "Desmond", "Fitzroy", "Kwabena",
        ),
        (
            "Campbell", "Brown", "Williams", "Thompson", "Clarke", "Francis", "Samuels", "Bennett", "Henry", "Grant",
            "Reid", "Morgan", "Okafor", "Adeyemi", "Mensah", "Asante", "Boateng", "Okonkwo", "Owusu", "Babatunde",
            "Adebayo", "Johnson", "Gordon", "Robinson", "Lewis", "McKenzie", "Forbes", "Edwards", "Osei", "Addo",
        ),
    ),
    (
        "european",
        0.03,
        (
            "Maria", "Agnieszka", "Halina", "Krystyna", "Ewa", "Anna", "Teresa", "Giuseppina", "Rosa", "Carmen",
            "Ana", "Helena", "Ingrid", "Renata", "Danuta", "Irena", "Zofia", "Eleni", "Sofia", "Małgorzata",
        ),
        (
            "Tadeusz", "Andrzej", "Krzysztof", "Jan", "Józef", "Stanisław", "Giovanni", "Antonio", "Giuseppe", "José",
            "André", "Luis", "Manuel", "Jürgen", "Hans", "Pierre", "Georgios", "Nikolaos", "Marek", "Piotr",
        ),
        (
            "Nowak", "Wójcik", "Kowalczyk", "Mazur", "Krawczyk", "Zając", "Król", "Wróbel", "Dudek", "Müller",
            "Schmidt", "Rossi", "Russo", "Esposito", "Bianchi", "García", "López", "Núñez", "Pérez", "Gonçalves",
            "Silva", "Santos", "Ferreira", "Costa", "Papadopoulos", "Georgiou", "Horváth", "De Souza", "D'Souza", "Van der Berg",
        ),
    ),
    (
        "east_asian",
        0.01,
        ("Mei", "Lin", "Siu", "Wai", "Yuk", "Lai", "Ping", "Mary", "Helen", "Susan", "Fung", "Kit"),
        ("Wei", "Jun", "Ming", "Kam", "Wing", "Hoi", "Kwok", "Peter", "David", "Michael", "Chun", "Hon"),
        ("Chan", "Wong", "Li", "Lee", "Cheung", "Lam", "Ng", "Leung", "Chen", "Zhang", "Wang", "Liu", "Yang", "Ho", "Tang"),
    ),
)  # fmt: skip

# Familiar forms. A record with a nickname fault carries one of these instead of the formal name.
NICKNAMES: dict[str, tuple[str, ...]] = {
    "Margaret": ("Peggy", "Maggie", "Maggy"), "Elizabeth": ("Liz", "Beth", "Betty", "Lizzie"),
    "Patricia": ("Pat", "Trish"), "Susan": ("Sue", "Susie"), "Christine": ("Chris", "Chrissie"),
    "Jennifer": ("Jenny", "Jen"), "Barbara": ("Babs",), "Catherine": ("Kath", "Cathy", "Kate"),
    "Kathleen": ("Kath", "Kathy"), "Kathryn": ("Kate", "Kathy"), "Dorothy": ("Dot", "Dolly"),
    "Deborah": ("Debbie", "Debs"), "Valerie": ("Val",), "Pamela": ("Pam",), "Josephine": ("Jo", "Josie"),
    "Victoria": ("Vicky",), "Rosemary": ("Rosie",), "Frances": ("Fran",), "Jacqueline": ("Jackie",),
    "Gillian": ("Gill", "Jill"), "Judith": ("Judy",), "Sandra": ("Sandy",), "Winifred": ("Winnie",),
    "Florence": ("Flo",), "Teresa": ("Tess", "Terri"), "Helen": ("Nell",), "Ellen": ("Nell", "Ellie"),
    "Amanda": ("Mandy",), "Nicola": ("Nicky",), "Abigail": ("Abby",), "Agnes": ("Aggie",),
    "Rebecca": ("Becky",), "Caroline": ("Carrie",), "Evelyn": ("Evie",), "Lilian": ("Lily",),
    "Mary": ("Molly", "Polly"), "Irene": ("Rene",), "Veronica": ("Ronnie",), "Bridget": ("Biddy",),
    "Philippa": ("Pippa",), "Geraldine": ("Gerry",), "Bernadette": ("Bernie",), "Beverley": ("Bev",),
    "William": ("Bill", "Billy", "Will"), "Robert": ("Bob", "Rob", "Bobby"), "Richard": ("Dick", "Rick"),
    "Michael": ("Mike", "Mick"), "Anthony": ("Tony",), "James": ("Jim", "Jimmy"), "Thomas": ("Tom", "Tommy"),
    "Edward": ("Ted", "Eddie"), "Kenneth": ("Ken", "Kenny"), "Christopher": ("Chris",), "Stephen": ("Steve",),
    "Steven": ("Steve",), "Peter": ("Pete",), "David": ("Dave",), "Frederick": ("Fred", "Freddie"),
    "Albert": ("Bert", "Albie"), "Ronald": ("Ron", "Ronnie"), "Raymond": ("Ray",), "Terence": ("Terry",),
    "Leonard": ("Len", "Lenny"), "Leslie": ("Les",), "Charles": ("Charlie", "Chas"), "Joseph": ("Joe",),
    "Patrick": ("Pat", "Paddy"), "Francis": ("Frank",), "Gerald": ("Gerry",), "Douglas": ("Doug",),
    "Donald": ("Don",), "Andrew": ("Andy",), "Philip": ("Phil",), "Timothy": ("Tim",), "Nicholas": ("Nick",),
    "Jonathan": ("Jon",), "Stanley": ("Stan",), "Harold": ("Harry",), "Henry": ("Harry",), "Sidney": ("Sid",),
    "Walter": ("Wally",), "Bernard": ("Bernie",), "Alexander": ("Alex", "Sandy"), "Samuel": ("Sam",),
    "Lawrence": ("Larry", "Laurie"), "Reginald": ("Reg",), "Herbert": ("Bert",), "Wilfred": ("Wilf",),
    "Maurice": ("Mo",), "Matthew": ("Matt",), "Daniel": ("Dan", "Danny"), "Benjamin": ("Ben",),
    "Geoffrey": ("Geoff",), "Malcolm": ("Mal",), "Vincent": ("Vince",), "Ernest": ("Ernie",),
    "Mohammed": ("Mo",), "Muhammad": ("Mo",), "Emmanuel": ("Manny",), "Cyril": ("Cy",),
}  # fmt: skip

# Share of British/Irish-tradition people with a double-barrelled surname (two surnames, hyphenated).
DOUBLE_BARRELLED_SHARE = 0.03


def _zipf_weights(n: int, offset: float = 8.0) -> np.ndarray:
    """Weights decreasing with rank, flatter than pure Zipf so the tail is not vanishingly rare."""
    w = 1.0 / (np.arange(n) + offset)
    return w / w.sum()


@dataclass(frozen=True)
class Names:
    """The names of every person, aligned with person_index."""

    given: pl.Series
    family: pl.Series
    nickname: pl.Series  # a familiar form of `given`, null when the name has none
    family_first: pl.Series  # first part of a double-barrelled surname, else null
    family_second: pl.Series  # second part, else null
    tradition: pl.Series


def draw_names(rng: np.random.Generator, female: np.ndarray) -> Names:
    """Draw a tradition, a forename (by sex), a surname and a nickname choice for every person.

    Everything is index arithmetic over one pooled list per kind, then a single Polars `gather`,
    so a million people take well under a second.
    """
    n = female.shape[0]
    shares = np.array([t[1] for t in _TRADITIONS])
    tradition = rng.choice(len(_TRADITIONS), size=n, p=shares / shares.sum())

    fore_pool: list[str] = []
    sur_pool: list[str] = []
    given_idx = np.empty(n, dtype=np.int64)
    family_idx = np.empty(n, dtype=np.int64)
    for t, (_, _, fem, mal, sur) in enumerate(_TRADITIONS):
        in_t = tradition == t
        for names, mask in ((fem, in_t & female), (mal, in_t & ~female)):
            k = int(mask.sum())
            given_idx[mask] = len(fore_pool) + rng.choice(len(names), size=k, p=_zipf_weights(len(names)))
            fore_pool.extend(names)
        k = int(in_t.sum())
        family_idx[in_t] = len(sur_pool) + rng.choice(len(sur), size=k, p=_zipf_weights(len(sur)))
        sur_pool.extend(sur)

    fore = pl.Series("given_name", fore_pool, dtype=pl.String)
    sur = pl.Series("family_name", sur_pool, dtype=pl.String)
    given = fore.gather(given_idx)
    family = sur.gather(family_idx)

    # Double-barrelled surnames: two plain British surnames (no apostrophe or space) joined by a hyphen.
    british = _TRADITIONS[0][4]
    plain = np.array([i for i, s in enumerate(british) if s.isalpha()], dtype=np.int64)
    double = (tradition == 0) & (rng.random(n) < DOUBLE_BARRELLED_SHARE)
    k = int(double.sum())
    pw = _zipf_weights(len(plain))
    first = sur.gather(plain[rng.choice(len(plain), size=k, p=pw)])
    second = sur.gather(plain[rng.choice(len(plain), size=k, p=pw)])
    didx = np.flatnonzero(double)
    family = family.scatter(didx, first + "-" + second)
    family_first = pl.Series("family_first", [None] * n, dtype=pl.String).scatter(didx, first)
    family_second = pl.Series("family_second", [None] * n, dtype=pl.String).scatter(didx, second)

    # Each person with a nickname-able forename has the one familiar form they go by.
    nick_pool: list[str] = []
    nick_start = np.zeros(len(fore_pool), dtype=np.int64)
    nick_count = np.zeros(len(fore_pool), dtype=np.int64)
    for i, name in enumerate(fore_pool):
        options = NICKNAMES.get(name, ())
        nick_start[i], nick_count[i] = len(nick_pool), len(options)
        nick_pool.extend(options)
    counts = nick_count[given_idx]
    has = counts > 0
    pick = nick_start[given_idx] + np.floor(rng.random(n) * np.maximum(counts, 1)).astype(np.int64)
    nick_idx = pl.Series(np.where(has, pick, 0)).set(pl.Series(~has), None) if n else pl.Series([], dtype=pl.Int64)
    nickname = pl.Series("nickname", nick_pool, dtype=pl.String).gather(nick_idx)

    names_t = pl.Series("tradition", [t[0] for t in _TRADITIONS], dtype=pl.String).gather(tradition)
    return Names(given, family, nickname, family_first, family_second, names_t)
