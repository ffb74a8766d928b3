"""Drives dfs-gateway's web page in headless Chromium (tests/gateway.rs):
signs in, opens a bucket, uploads a file, waits for it in the listing,
takes a screenshot, downloads it. Arguments: URL ACCESS SECRET BUCKET
UPLOAD DOWNLOAD_DIR SCREENSHOT."""

import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support.ui import WebDriverWait

url, access, secret, bucket, upload, downloads, shot = sys.argv[1:8]
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1000,640"]:
    options.add_argument(arg)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
options.add_experimental_option("prefs", {
    "download.default_directory": downloads,
    "download.prompt_for_download": False,
})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.execute_cdp_cmd("Page.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": downloads})
    wait = WebDriverWait(driver, 30)
    driver.get(url + "/ui")
    driver.find_element(By.ID, "access").send_keys(access)
    driver.find_element(By.ID, "secret").send_keys(secret)
    driver.find_element(By.ID, "signin-button").click()
    wait.until(lambda d: bucket + "/" in d.find_element(By.ID, "rows").text
               or d.find_element(By.ID, "signin-error").text)
    error = driver.find_element(By.ID, "signin-error").text
    if error:
        sys.exit("sign-in: " + error)
    driver.find_element(By.LINK_TEXT, bucket + "/").click()
    wait.until(lambda d: d.find_element(By.ID, "path").text == "/" + bucket + "/")
    driver.find_element(By.ID, "file").send_keys(upload)
    driver.find_element(By.ID, "upload").click()
    name = os.path.basename(upload)
    try:
        wait.until(lambda d: "uploaded " + name in d.find_element(By.ID, "status").text
                   or d.find_element(By.ID, "status").get_attribute("class") == "error")
    except TimeoutException:
        sys.exit("upload: no answer; the page says: "
                 + driver.find_element(By.ID, "status").text + "; console: "
                 + str(driver.get_log("browser")))
    status = driver.find_element(By.ID, "status")
    if status.get_attribute("class") == "error":
        sys.exit("upload: " + status.text)
    wait.until(lambda d: name in d.find_element(By.ID, "rows").text)
    driver.save_screenshot(shot)
    driver.find_element(By.LINK_TEXT, name).click()
    target = os.path.join(downloads, name)
    wait.until(lambda d: os.path.exists(target) and not os.path.exists(target + ".crdownload"))
    print("listed and downloaded", name)
finally:
    driver.quit()
