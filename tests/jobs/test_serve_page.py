"""The search page in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium) loads it from a live server on 127.0.0.1, types a query, uploads and drops an image, opens a result, and
the rendered results are checked against the API's. `.ci/run` installs the browser; without it this file is skipped,
unless CLIP_LAB_REQUIRE_BROWSER is set (as CI sets it), where a missing browser fails."""

import os
import shutil
from urllib.parse import quote

import pytest
from cli_args import ckpt_of

from clip_lab.eval.index import IndexSpec
from clip_lab.jobs import serve

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("CLIP_LAB_REQUIRE_BROWSER"):
        raise RuntimeError("CLIP_LAB_REQUIRE_BROWSER is set but chromium / chromedriver are not installed")
    pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)", allow_module_level=True)


@pytest.fixture(scope="module")
def site(trained_run, tmp_path_factory):
    """(the page's URL, the retrievers behind it): two models, `t` and `t:best`, on a live loopback server."""
    cache = tmp_path_factory.mktemp("page_cache")
    path = ckpt_of(trained_run)
    retrievers = serve.load_retrievers([path, path], None, IndexSpec(), "cpu", cache_dir=str(cache))
    with serve.running(serve.build_app(retrievers)) as url:
        yield url, retrievers


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--lang=en"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the Debian driver, never Selenium Manager's download
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    driver.set_window_size(1400, 1000)
    yield driver
    driver.quit()


def wait(driver, condition, timeout=30):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def panes(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#panes .pane")


def cards(pane):
    return pane.find_elements(By.CSS_SELECTOR, ".grid .card")


def loaded_pictures(driver) -> list[bool]:
    """Per result picture on the page: whether the browser decoded it (a broken image has no natural width)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.grid img')].map(i => i.complete && i.naturalWidth > 0)"
    )


def search(driver, text, k=8):
    box = driver.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    field = driver.find_element(By.ID, "k")
    field.clear()
    field.send_keys(str(k))
    driver.find_element(By.ID, "go").click()
    wait(driver, lambda d: len(panes(d)) == 2 and all(len(cards(p)) == k for p in panes(d)))
    wait(driver, lambda d: all(loaded_pictures(d)))


def test_a_text_query_shows_both_models_results_as_the_api_ranks_them(site, browser):
    url, retrievers = site
    browser.get(url + "/")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#right option")) == 3)
    assert browser.find_element(By.ID, "left").get_attribute("value") == "t"
    assert browser.find_element(By.ID, "right").get_attribute("value") == "t:best"  # side by side by default
    search(browser, "a red circle")
    expected = retrievers["t"].search_text("a red circle", 8)
    for pane in panes(browser):
        shown = cards(pane)
        assert [int(c.get_attribute("data-image-id")) for c in shown] == [m.image_id for m in expected]
        assert shown[0].find_element(By.CSS_SELECTOR, ".rank").text == "#1"
        assert shown[0].find_element(By.CSS_SELECTOR, ".score").text == f"{expected[0].score:.3f}"
        assert shown[0].find_element(By.CSS_SELECTOR, "p").text == expected[0].captions[0]
        assert "top 8 of 96 images" in pane.find_element(By.CSS_SELECTOR, ".status").text
    # the two panes sit side by side on a laptop screen
    left, right = (p.rect for p in panes(browser))
    assert right["x"] >= left["x"] + left["width"] - 1 and abs(right["y"] - left["y"]) < 2
    assert "text=a+red+circle" in browser.current_url or f"text={quote('a red circle')}" in browser.current_url


def test_a_caption_of_the_split_marks_its_true_image(site, browser):
    url, retrievers = site
    r = retrievers["t"]
    caption = r.split.captions[40]
    truth = set(r.true_images(caption))
    search(browser, caption, k=10)
    ranked = [m.image_id for m in r.search_text(caption, 10)]
    for pane in panes(browser):
        marked = [int(c.get_attribute("data-image-id")) for c in cards(pane) if "true" in c.get_attribute("class")]
        assert marked == [i for i in ranked if i in truth]
        status = pane.find_element(By.CSS_SELECTOR, ".status").text
        found = [n for n, i in enumerate(ranked, 1) if i in truth]
        assert (f"true image at #{found[0]}" if found else "true image not in the top 10") in status
    for card in cards(panes(browser)[0]):
        badge = card.find_elements(By.CSS_SELECTOR, ".badge")
        assert bool(badge) == (int(card.get_attribute("data-image-id")) in truth)


def test_an_uploaded_image_shows_its_captions_similar_images_and_zero_shot_classes(site, browser, demo_root):
    url, retrievers = site
    browser.get(url + "/")
    wait(browser, lambda d: len(panes(d)) == 2)
    browser.find_element(By.ID, "classes").send_keys("circle, square, triangle")
    photo = demo_root / "val2014" / "COCO_val2014_000001000003.jpg"
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait(browser, lambda d: all(len(p.find_elements(By.CSS_SELECTOR, ".captions li")) == 5 for p in panes(d)))
    wait(browser, lambda d: all(len(cards(p)) == 10 for p in panes(d)) and all(loaded_pictures(d)))
    r = retrievers["t"]
    pane = panes(browser)[0]
    captions = [li.text for li in pane.find_elements(By.CSS_SELECTOR, ".captions li .text")]
    assert captions == [m.caption for m in r.search_image(photo, 5, "captions", distinct=True)]
    assert int(cards(pane)[0].get_attribute("data-image-id")) == 1000003  # the image itself, found first
    bars = pane.find_elements(By.CSS_SELECTOR, ".bar")
    assert len(bars) == 3
    predicted = r.classify(photo, ["circle", "square", "triangle"]).predicted
    assert pane.find_element(By.CSS_SELECTOR, ".bars strong").text == f"zero-shot: {predicted}"
    assert browser.execute_script("return document.querySelector('.upload img').naturalWidth") > 0


def test_a_dropped_image_is_searched_too(site, browser):
    url, _ = site
    # a real drop event carrying a File, as a desktop drag and drop delivers it
    browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch('/api/models/t/gallery/1000010/thumbnail?size=128').then(r => r.blob()).then(blob => {
          const data = new DataTransfer();
          data.items.add(new File([blob], 'dropped.jpg', {type: 'image/jpeg'}));
          document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true}));
          done();
        });
        """
    )
    wait(browser, lambda d: all(len(cards(p)) == 10 for p in panes(d)))
    assert int(cards(panes(browser)[0])[0].get_attribute("data-image-id")) == 1000010


def test_clicking_a_result_shows_its_captions_and_the_models_top_captions(site, browser):
    url, retrievers = site
    search(browser, "a blue square", k=4)
    first = cards(panes(browser)[0])[0]
    image_id = int(first.get_attribute("data-image-id"))
    first.click()
    dialog = browser.find_element(By.ID, "detail")
    wait(browser, lambda d: dialog.is_displayed())
    wait(browser, lambda d: len(dialog.find_elements(By.CSS_SELECTOR, ".detail-captions li")) == 5)
    r = retrievers["t"]
    own = [li.text for li in dialog.find_elements(By.CSS_SELECTOR, "ul li")]
    assert own == r.image_captions(image_id)
    top = [li.text for li in dialog.find_elements(By.CSS_SELECTOR, ".detail-captions li .text")]
    assert top == [m.caption for m in r.search_image(image_id, 5, "captions", distinct=True)]
    dialog.find_element(By.CSS_SELECTOR, ".similar").click()  # images like this one: a gallery-image query
    wait(browser, lambda d: not dialog.is_displayed())
    wait(browser, lambda d: all(len(cards(p)) == 4 for p in panes(d)))
    assert int(cards(panes(browser)[0])[0].get_attribute("data-image-id")) == image_id


def test_errors_show_as_one_line_and_the_page_logs_no_error(site, browser):
    url, _ = site
    browser.get(url + "/")
    wait(browser, lambda d: len(panes(d)) == 2)
    browser.find_element(By.ID, "go").click()  # no query
    message = browser.find_element(By.ID, "message")
    assert message.is_displayed() and "type a query first" in message.text
    browser.find_element(By.ID, "text").send_keys("a" * 600)  # the box stops at 500 characters
    assert len(browser.find_element(By.ID, "text").get_attribute("value")) == 500
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_on_a_phone_the_panes_stack_and_the_grid_fits(site, browser):
    url, _ = site
    browser.set_window_size(390, 844)
    try:
        browser.get(url + "/#text=a%20green%20square&k=4")  # a shared link runs its query
        wait(browser, lambda d: len(panes(d)) == 2 and all(len(cards(p)) == 4 for p in panes(d)))
        top, bottom = (p.rect for p in panes(browser))
        assert bottom["y"] >= top["y"] + top["height"] and abs(bottom["x"] - top["x"]) < 2
        width = browser.execute_script("return document.documentElement.clientWidth")
        scroll = browser.execute_script("return document.documentElement.scrollWidth")
        assert scroll <= width  # nothing sticks out sideways
        first, second = (c.rect for c in cards(panes(browser)[0])[:2])
        assert abs(first["y"] - second["y"]) < 2  # two results a row
    finally:
        browser.set_window_size(1400, 1000)


def test_the_keyboard_opens_a_result_and_escape_closes_it(site, browser):
    from selenium.webdriver.common.keys import Keys

    search(browser, "a white cross", k=4)
    first = cards(panes(browser)[0])[0]
    browser.execute_script("arguments[0].focus()", first)
    first.send_keys(Keys.ENTER)
    dialog = browser.find_element(By.ID, "detail")
    wait(browser, lambda d: len(dialog.find_elements(By.CSS_SELECTOR, ".detail-captions li .text")) == 5)
    assert dialog.is_displayed()  # the key that opened it did not also press its close button
    # the image's own captions among the model's top ones are green
    colors = browser.execute_script(
        "return [...document.querySelectorAll('.detail-captions li.own')].map(e => getComputedStyle(e).color)"
    )
    assert colors and set(colors) == {"rgb(18, 134, 90)"}
    dialog.find_element(By.CSS_SELECTOR, ".close").send_keys(Keys.ESCAPE)
    wait(browser, lambda d: not dialog.is_displayed())


def test_an_upload_clears_the_text_query_and_new_classes_rerun_it(site, browser, demo_root):
    from selenium.webdriver.common.keys import Keys

    url, retrievers = site
    search(browser, "a purple square", k=4)
    assert "text=" in browser.current_url
    classes = browser.find_element(By.ID, "classes")
    classes.clear()
    classes.send_keys("circle, circle")  # a bad class list costs the classes only
    browser.find_element(By.ID, "file").send_keys(str(demo_root / "val2014" / "COCO_val2014_000001000003.jpg"))
    warned = lambda d: d.find_elements(By.CSS_SELECTOR, ".upload .warn")
    wait(browser, lambda d: all(len(cards(p)) == 4 for p in panes(d)) and warned(d))
    assert "class names repeat" in browser.find_element(By.CSS_SELECTOR, ".upload .warn").text
    assert browser.find_element(By.ID, "text").get_attribute("value") == "" and "#" not in browser.current_url
    status = panes(browser)[0].find_element(By.CSS_SELECTOR, ".status").text
    assert "the uploaded COCO_val2014_000001000003.jpg" in status
    classes.clear()
    classes.send_keys("circle, square, triangle, cross", Keys.ENTER)  # the same image, new classes
    wait(browser, lambda d: all(len(p.find_elements(By.CSS_SELECTOR, ".bar")) == 4 for p in panes(d)))
    assert not browser.find_element(By.ID, "message").is_displayed()


def test_on_a_phone_the_detail_view_closes_by_its_button(site, browser):
    url, _ = site
    browser.set_window_size(390, 844)
    try:
        browser.get("about:blank")
        browser.get(url + "/#text=a%20yellow%20circle&k=4")
        wait(browser, lambda d: len(panes(d)) == 2 and all(len(cards(p)) == 4 for p in panes(d)))
        cards(panes(browser)[0])[0].click()
        dialog = browser.find_element(By.ID, "detail")
        wait(browser, lambda d: dialog.is_displayed())
        wait(browser, lambda d: d.execute_script("return document.querySelector('#detail-body img').complete"))
        dialog.find_element(By.CSS_SELECTOR, ".close").click()  # not covered by the picture
        wait(browser, lambda d: not dialog.is_displayed())
    finally:
        browser.set_window_size(1400, 1000)


def test_with_one_model_there_is_nothing_to_put_beside_it(trained_run, browser, tmp_path):
    path = ckpt_of(trained_run)
    retrievers = serve.load_retrievers([path], None, IndexSpec(), "cpu", cache_dir=str(tmp_path / "cache"))
    with serve.running(serve.build_app(retrievers)) as url:
        browser.get(url + "/")
        wait(browser, lambda d: len(panes(d)) == 1)
        assert not browser.find_element(By.ID, "right").is_displayed()
        search_one = browser.find_element(By.ID, "text")
        search_one.send_keys("a red circle")
        browser.find_element(By.ID, "go").click()
        wait(browser, lambda d: len(cards(panes(d)[0])) == 10)
